"""The job lifecycle: one state machine over a SQLite journal, so no paid take is ever bought twice or lost.

    journal has the take?  SAVED and file present ......... reuse: no network, no charge
                           SUBMITTED ...................... re-attach: poll the known request_id
                           SUCCEEDED, or SAVED but no file  download again from the recorded URL
                           SUBMITTING / SUBMIT_UNKNOWN .... the POST's outcome was lost: never resubmit blindly
                           FAILED / none .................. submit
    submit -> record request_id BEFORE anything else -> poll (deadline) -> success -> download (atomic) -> record file
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

from .client import Clock, GMIClient, Listing, RemoteJob, Sleep, backoff_delay, pick_video_url
from .errors import (DownloadError, GMIError, HTTPError, InputError, JobFailedError, JobTimeoutError, MediaError,
                     RateLimitedError, SubmitUnknownError)
from . import preflight, reconcile
from .governor import Governor
from .journal import Job, JobState, Journal  # noqa: F401  (re-exported: the lifecycle's records)
from .images import StillImage, payload_matches, wire_payload
from .media import verify_video
from .media_plan import DecodeOptions
from . import posting
from .net import Timing
from .posting import post_recorded
from .models import CATALOGUE, ModelSpec, Price, check_request_id, parse_gmi_price
from .budget import SpendCap  # noqa: F401  (re-exported)
from .progress import PollPolicy, Progress, describe_wait, expected_seconds  # noqa: F401  (PollPolicy re-exported)
from .takes import holding, holding_across_processes

log = logging.getLogger("gmi")

@dataclass(frozen=True)
class JobResult:
    request_id: str
    path: Path
    reused: bool  # True when nothing was submitted or downloaded: the saved file served the run


def job_key(model_id: str, payload: dict, take: int, rehearsal: bool = False) -> str:
    """Same model, same payload, same take: the same paid job. A rehearsal of it is another job."""
    what = {"model": model_id, "payload": payload, "take": take}
    if rehearsal:
        what["rehearsal"] = True
    canonical = json.dumps(what, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


_gmi_rates: dict[tuple[str, str], float | None] = {}
WRITE_ERRORS = {errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EEXIST,
                getattr(errno, "EDQUOT", errno.ENOSPC)}  # the output folder went away, read-only or full


def video_file_name(model_id: str, request_id: str, name: str | None = None) -> str:
    """Unique per request id: two nodes running at once never collide, and ids alike once made file-safe (cut to
    80 characters, or '/' for '_') still get their own file. ``name`` (a batch line's) leads, when given."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", request_id)[:80]
    if safe != request_id:
        safe += "-" + hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    lead = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] + "_" if name else ""
    model = re.sub(r"[^A-Za-z0-9-]+", "_", model_id).strip("_")[:60] or "gmi"  # GMI's 'model' field, for a collect
    return f"{lead}{model}_{safe}.mp4"


class JobRunner:
    """Runs one take through the lifecycle. ``connect`` makes a GMIClient (called only when the network is needed,
    so a saved take is served even without a key). To stop a run, cancel its task: the journal stays consistent."""

    def __init__(self, journal: Journal, connect: Callable[[], GMIClient], output_dir: Path, *,
                 clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep, poll: PollPolicy = PollPolicy(),
                 wall_clock: Clock = time.time, on_progress: Callable[[Progress], None] = lambda p: None,
                 budget: SpendCap | None = None, governor: Governor | None = None):
        self.journal = journal
        self.connect = connect
        self.output_dir = Path(output_dir).absolute()  # the journal records it: the same wherever one runs from
        self.clock = clock
        self.wall_clock = wall_clock
        self.sleep = sleep
        self.poll = poll
        self.on_progress = on_progress
        self.budget = budget
        self.governor = governor
        self.frames_options: DecodeOptions | None = None  # set when frames will be decoded: memory is checked first
        self.images: dict[str, StillImage] = {}  # image references of this run's payloads -> what goes on the wire

    TAKE_LOCK_RETRY_S = 0.5  # how often a run waiting on another process's run of the same take looks again

    @asynccontextmanager
    async def _hold(self, key: str) -> AsyncIterator[None]:
        """This take, exclusively: against other runs in this process, then against other processes."""
        def waiting() -> None:
            self.on_progress(Progress("submitting", "waiting: another program (the gmi command or another ComfyUI) "
                                                    "is running this same take; its video will be reused", 0.0))

        async with holding(key), holding_across_processes(self.journal.path.with_suffix(".lock"), key, self.sleep,
                                                          self.TAKE_LOCK_RETRY_S, waiting):
            yield

    @asynccontextmanager
    async def _remote(self) -> AsyncIterator[GMIClient]:
        """A job's remote part: one of the governor's places (when there is one), and a client session."""
        if self.governor is None:
            async with self.connect() as client:
                client.on_wait = self._waiting
                yield client
            return
        async with self.governor.job_slot():
            async with self.connect() as client:
                client.governor = client.governor or self.governor
                client.on_wait = self._waiting
                yield client

    def _waiting(self, text: str) -> None:
        self.on_progress(Progress("waiting", text))

    async def _record(self, job: Job) -> None:
        # Shielded: a cancel arriving mid-write must not lose what was just learned (a request id, a file).
        await asyncio.shield(asyncio.to_thread(self.journal.record, job))

    async def _after_a_post_in_flight(self, key: str) -> None:
        """A stopped run of this take may have left its POST out (it runs on to its answer): wait for that answer."""
        if posting.answer_pending(key):
            self.on_progress(Progress("submitting", "waiting for GMI's answer to this take's earlier submit", 0.0))
            await asyncio.to_thread(posting.wait_for_answer, key, Timing().submit_timeout + 60)

    async def _saved(self, job: Job | None) -> JobResult | None:
        """The saved video, when it is still there and whole; a file cut short or overwritten counts as missing
        (it is downloaded again from the known request, never bought again)."""
        if job is None or job.state is not JobState.SAVED or not job.path or not Path(job.path).is_file():
            return None
        def verify(path: Path) -> None:
            preflight.check_decoder()  # no decoder: say so, not that the file is damaged
            verify_video(path)

        try:
            await asyncio.to_thread(verify, Path(job.path))
        except MediaError as exc:
            log.warning("saved video of request %s is damaged (%s); downloading it again", job.request_id, exc)
            return None
        path = Path(job.path)
        if path.parent != self.output_dir:  # saved by another run into another folder: put it here too, for free
            await asyncio.to_thread(preflight.check_output_folder, self.output_dir, 0)
            path = await asyncio.to_thread(place_copy, path, self.output_dir / path.name)
        self.on_progress(Progress("reused", f"reused saved video of request {job.request_id}", 1.0, job.request_id))
        return JobResult(job.request_id, path, reused=True)

    async def _preflight(self, payload: dict, model_id: str) -> None:
        """Before anything is paid or fetched: a decoder, room in the output folder, memory for linked frames."""
        spec = CATALOGUE.get(model_id)
        seconds = spec.seconds(payload) if spec is not None and payload else 15

        def check() -> None:
            preflight.check_decoder()
            preflight.check_output_folder(self.output_dir, seconds)
            if self.frames_options is not None and spec is not None and payload:
                preflight.check_frames_fit(spec, payload, self.frames_options)

        await asyncio.to_thread(check)

    async def run(self, spec: ModelSpec, payload: dict, take: int, *, timeout_s: float, rehearse: bool = False,
                  name: str | None = None, images: list[StillImage] | tuple = ()) -> JobResult:
        """The saved video of this take, paying for it only if no earlier run already did. ``rehearse``: this runner
        talks to the free stand-in (gmi.rehearsal), and the journal keeps the result apart from real takes.
        ``images``: the stills the payload refers to (sent on the wire, never journaled)."""
        self.images.update({image.ref: image for image in images})
        key = job_key(spec.model_id, payload, take, rehearse)
        deadline = self.clock() + timeout_s
        async with self._hold(key):
            await self._after_a_post_in_flight(key)
            job = await asyncio.to_thread(self.journal.get, key)
            if (reused := await self._saved(job)) is not None:
                return reused
            await self._preflight(payload, spec.model_id)
            if job is None or job.state is JobState.FAILED:
                job = Job(key=key, model_id=spec.model_id, payload=payload, take=take, state=JobState.SUBMITTING,
                          rehearsal=rehearse)
                fresh = True
            else:
                fresh = False
            async with self._remote() as client:
                if not fresh and job.state in (JobState.SUBMITTING, JobState.SUBMIT_UNKNOWN):
                    if job.rehearsal:
                        job.state = JobState.SUBMITTING  # a rehearsal is free: its lost answer is simply asked again
                    else:
                        await self._reconcile(client, job)
                        if (reused := await self._saved(job)) is not None:  # adopted a video collected by id
                            return reused
                answer = await self._submit(client, job, deadline) if job.state is JobState.SUBMITTING else None
                return await self._drive(client, job, deadline, answer, name)

    async def collect(self, request_id: str, *, timeout_s: float) -> JobResult:
        """The video of an existing request, by its id: never submits anything."""
        request_id = check_request_id(request_id)
        deadline = self.clock() + timeout_s
        known = await asyncio.to_thread(self.journal.find_request, request_id)
        key = known.key if known is not None else f"request:{request_id}"
        async with self._hold(key):
            job = await asyncio.to_thread(self.journal.get, key) if known is not None else None
            if (reused := await self._saved(job)) is not None:
                return reused
            await self._preflight(job.payload if job is not None else {}, job.model_id if job else "")
            async with self._remote() as client:
                try:
                    remote = await client.status(request_id, deadline=deadline)
                except HTTPError as exc:
                    if exc.status in (400, 404):
                        raise InputError(f"GMI has no request {request_id!r} (HTTP {exc.status}: {exc.gmi_text}). "
                                       "Copy the id from a request_id output, an error message or GMI's console.") \
                            from None
                    raise
                if job is None:  # dated on this machine's clock: a take whose POST left later cannot own it
                    job = Job(key=key, model_id=str(remote.raw.get("model") or "gmi"), payload={}, take=-1,
                              state=JobState.SUBMITTED, request_id=request_id, created_at=self.wall_clock())
                if job.state is not JobState.SUCCEEDED or remote.terminal:
                    job.state = JobState.SUBMITTED
                    if remote.terminal:
                        await self._finish(job, remote)
                    else:
                        await self._record(job)
                return await self._drive(client, job, deadline)

    async def _drive(self, client: GMIClient, job: Job, deadline: float, known: RemoteJob | None = None,
                     name: str | None = None) -> JobResult:
        if job.state is JobState.SUBMITTED:
            await self._wait(client, job, deadline, known)
        # SUCCEEDED, or SAVED with the file gone: fetch the video (again).
        return await self._download(client, job, deadline, name)

    async def price(self, client: GMIClient, spec: ModelSpec, payload: dict) -> Price:
        """The take's estimated price: GMI's own per-second rate when /models/{id} states one, else the table."""
        key = (client.api_root, spec.model_id)
        if key not in _gmi_rates:
            _gmi_rates[key] = parse_gmi_price(await client.model_info(spec.model_id))
        return spec.estimate_price(payload, _gmi_rates[key])

    async def _submit(self, client: GMIClient, job: Job, deadline: float) -> RemoteJob:
        wire_payload(job.payload, self.images)  # every image it refers to is at hand, before anything is recorded
        job.request_id = job.media_url = job.path = job.error = job.finished_at = None
        spec = CATALOGUE.get(job.model_id)
        price = await self.price(client, spec, job.payload) if spec is not None and not job.rehearsal else None
        if price is not None and self.budget is not None:
            self.budget.reserve(price)
        job.price = price.amount if price is not None else None
        attempts: list[posting.Attempt] = []  # one per try at the POST (a 429 makes another)
        try:
            return await self._submit_paid(client, job, deadline, price, attempts)
        except BaseException:
            unsent = not attempts or not attempts[-1].sent  # earlier tries were refused: they made nothing
            if price is not None and self.budget is not None and (job.state is JobState.FAILED or unsent):
                self.budget.release(price)  # nothing was created: the cap must not count it
            raise

    async def _submit_paid(self, client: GMIClient, job: Job, deadline: float, price: Price | None,
                           attempts: list[posting.Attempt]) -> RemoteJob:
        free = " (rehearsal: nothing is paid)" if job.rehearsal else ""
        cost = f", estimated {price}" if price is not None else free
        attempt = 0
        while True:
            await client.turn()  # GMI's rate limit is waited out before the job is recorded, never after
            log.info("GMI %s: submitting take %d%s", job.model_id, job.take, cost)
            where = "the rehearsal stand-in" if job.rehearsal else "GMI"
            self.on_progress(Progress("submitting", f"submitting to {where}{cost}", 0.0))
            try:
                attempts.append(posting.Attempt())
                remote, cancelled = await post_recorded(self.journal, client, job,
                                                        wire_payload(job.payload, self.images), self.wall_clock,
                                                        attempts[-1], self._holding_for_the_answer)
            except RateLimitedError as exc:  # nothing was created: wait and try again, within the deadline
                # On a 429 the governor holds every request for GMI's Retry-After, and says so: no wait of our own.
                governed = exc.status == 429 and client.governor is not None
                delay = client.governor.pause_left() if governed else \
                    backoff_delay(attempt, client.timing, exc.retry_after, client.rng)
                if self.clock() + delay > deadline:
                    raise
                log.info("GMI submit: HTTP %s, retrying in %.1fs", exc.status, delay)
                if not governed:
                    busy = "rate-limited by GMI" if exc.status == 429 else f"GMI is busy (HTTP {exc.status})"
                    self.on_progress(Progress("submitting", f"{busy}, waiting {delay:.0f} s"))
                    attempt += 1
                    await self.sleep(delay)
                continue
            except SubmitUnknownError as exc:
                await self._mark_submit_unknown(job, str(exc))
            break
        if remote is None:  # stopped before the POST left: nothing was sent, the take stays free to queue again
            raise asyncio.CancelledError()
        self.on_progress(Progress("queued", f"submitted as request {remote.request_id}", 0.0, remote.request_id))
        if remote.terminal:
            await self._finish(job, remote)
        if cancelled:
            raise asyncio.CancelledError()
        return remote

    def _holding_for_the_answer(self) -> None:
        self.on_progress(Progress("submitting", "stopping once GMI answers the submit (it says whether a paid job "
                                                "exists, so it is kept, not lost)"))

    async def _fail(self, job: Job, why: str) -> None:
        job.state, job.error = JobState.FAILED, why
        await self._record(job)

    async def _mark_submit_unknown(self, job: Job, why: str, candidates: list[str] | None = None) -> None:
        job.state, job.error = JobState.SUBMIT_UNKNOWN, why
        await self._record(job)
        found = (f" GMI lists jobs made then that may be it: {', '.join(candidates)}; collect one by its id."
                 if candidates else " Look in GMI's console for a request made at that time and collect it by its id"
                                    " (queueing this take again then gives that video).")
        raise SubmitUnknownError(
            f"{why.rstrip('.')}. So that it is not paid twice, this take will not be submitted again.{found} "
            f"Or change 'take' to pay for a new generation.")

    async def _reconcile(self, client: GMIClient, job: Job) -> None:
        """A POST whose answer was lost: find the job it made, or prove it made none, before any new POST."""
        why = job.error or "the previous run stopped while submitting"
        started = job.submit_started_at
        listing = await client.list_requests(job.model_id) if started is not None else None
        rows = await asyncio.to_thread(self.journal.all)
        others = {r.request_id for r in rows if r.request_id and r.key != job.key and not r.key.startswith("request:")}
        collected = {r.request_id for r in rows if r.request_id and r.key.startswith("request:")}
        if listing is None:
            found = await self._collected_match(client, job, rows, others) if started is not None else None
            if found is None:
                await self._mark_submit_unknown(job, why)
            verdict = reconcile.Verdict(found=found)
        else:
            verdict = reconcile.judge(listing, model_id=job.model_id, payload=job.payload, started=started,
                                      lasted=client.timing.submit_timeout, others=others, collected=collected,
                                      images=self.images)
        if verdict.found is not None:
            log.info("GMI %s: found request %s for the lost submit of take %d", job.model_id,
                     verdict.found.request_id, job.take)
            job.state, job.request_id, job.error = JobState.SUBMITTED, verdict.found.request_id, None
            held = next((r for r in rows if r.request_id == job.request_id and r.state is JobState.SAVED), None)
            if held is not None:  # collected by id and saved: this take is that file
                job.state, job.path, job.media_url, job.finished_at = JobState.SAVED, held.path, held.media_url, \
                    held.finished_at
            if not await asyncio.shield(asyncio.to_thread(self.journal.claim, job)):
                # Another take (reconciled at the same moment) has it: two takes never share one paid job.
                job.request_id, job.path, job.media_url = None, None, None
                await self._mark_submit_unknown(job, f"{why.rstrip('.')}; the job GMI made then "
                                                     f"({verdict.found.request_id}) belongs to another take")
            if verdict.found.terminal and job.state is JobState.SUBMITTED:
                await self._finish(job, verdict.found)
            return
        if not verdict.candidates and verdict.covered:
            # GMI's whole listing of that time holds no job of this model: the lost POST created nothing.
            log.info("GMI %s: the lost submit of take %d made no job; submitting", job.model_id, job.take)
            job.state = JobState.SUBMITTING
            return
        if not verdict.candidates:
            why = f"{why.rstrip('.')}; GMI's listing does not reach back to that time, so it proves nothing"
        await self._mark_submit_unknown(job, why, verdict.candidates)

    COLLECTED_LOOKED_AT = 20  # newest jobs collected by id, read again when GMI offers no listing

    async def _collected_match(self, client: GMIClient, job: Job, rows: list[Job],
                               others: set[str]) -> RemoteJob | None:
        """Without GMI's listing: the job the user collected by its id (as our message asks) that this take's lost
        POST made. Judged as a listing of those records alone, which can find a job but never prove none was made.
        Taken only when no other lost take could own it, and GMI's echo of the payload is this take's (or missing,
        from a record dated while the POST was out)."""
        started, lasted = job.submit_started_at, client.timing.submit_timeout
        # Collected before this take's POST left (both times on this machine's clock): it cannot be this take's.
        collected = {r.request_id: r.created_at for r in rows
                     if r.request_id and r.key.startswith("request:") and r.created_at >= started}
        records = []
        for request_id in list(collected)[-self.COLLECTED_LOOKED_AT:]:
            try:
                records.append(await client.status(request_id, deadline=self.clock() + 60))
            except GMIError:
                continue
        found = reconcile.judge(Listing(records), model_id=job.model_id, payload=job.payload, started=started,
                                lasted=lasted, others=others, collected=set(collected), images=self.images).found
        if found is None:
            return None
        echo, made = found.raw.get("payload"), reconcile.created_at(found.raw.get("created_at"))

        def could_own(r: Job) -> bool:  # another lost take whose POST was out when GMI made it, with that payload
            return (r.key != job.key and r.model_id == job.model_id and not r.rehearsal and
                    r.state in (JobState.SUBMITTING, JobState.SUBMIT_UNKNOWN) and r.submit_started_at is not None and
                    r.submit_started_at <= collected[found.request_id] and
                    (made is None or r.submit_started_at - reconcile.SKEW <= made <= r.submit_started_at + lasted +
                     reconcile.SKEW) and (echo is None or payload_matches(echo, r.payload, self.images)))

        if any(could_own(r) for r in rows):
            return None
        if payload_matches(echo, job.payload, self.images):
            return found
        return found if echo is None and made is not None else None

    UNKNOWN_STATUS_READS = 3  # reads of a status word the pack cannot place before it stops waiting
    URL_REREADS = 3           # reads of a success that names no video before the user is told

    async def _wait(self, client: GMIClient, job: Job, deadline: float, known: RemoteJob | None = None) -> None:
        """Polls until GMI finishes the job. ``known``: a status just read (the POST's answer), so the first read
        waits one interval instead of asking again at once."""
        since = job.submit_started_at or self.wall_clock()  # elapsed counts from the submit, also after a re-attach
        spec = CATALOGUE.get(job.model_id)
        eta, learned = (await asyncio.to_thread(expected_seconds, self.journal, spec, job.payload)) \
            if spec is not None and job.payload else (None, False)
        aim = eta if learned and not job.rehearsal else None  # read often only around a time seen here before
        strange = 0
        while True:
            remote, known = known or await client.status(job.request_id, deadline=deadline), None
            if remote.terminal:
                await self._finish(job, remote)
                return
            await asyncio.shield(asyncio.to_thread(self.journal.keep, job))  # the file may have been deleted
            strange = 0 if remote.known else strange + 1
            if strange >= self.UNKNOWN_STATUS_READS:
                raise JobTimeoutError(
                    f"GMI reports request {job.request_id} as {remote.status!r}, a status the pack does not know, so "
                    "it cannot tell whether the job is running or done. It is kept: queue the same inputs again "
                    "later, or collect it by its id, without paying again.", request_id=job.request_id)
            stage = "queued" if remote.status in ("created", "queued") else "processing"
            text, fraction = describe_wait(stage, self.wall_clock() - since, eta,
                                           "the rehearsal stand-in" if job.rehearsal else "GMI")
            self.on_progress(Progress(stage, f"{text} (request {job.request_id})", fraction, job.request_id))
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise JobTimeoutError(
                    f"Request {job.request_id} is still {remote.status} at GMI after the time limit. It is kept: "
                    f"queue the same inputs again (or raise timeout_minutes) to collect it without paying again.",
                    request_id=job.request_id)
            await self.sleep(min(self.poll.interval(self.wall_clock() - since, aim), remaining))

    async def _finish(self, job: Job, remote: RemoteJob) -> None:
        """Records GMI's verdict. A success is paid whatever its outcome holds: it is kept as SUCCEEDED (collectable,
        never resubmitted) even when it names no video yet."""
        if remote.status == "success":
            job.state, job.media_url = JobState.SUCCEEDED, pick_video_url(remote.outcome)
            job.finished_at = job.finished_at or self.wall_clock()
            job.error = None if job.media_url else f"success without a video URL: {describe_outcome(remote)}"
            await self._record(job)
            return
        reason = remote.failure_reason()
        await self._fail(job, f"{remote.status}: {reason}")
        again = (" Queueing the same inputs again submits a new, paid job: change what GMI's reason points to first."
                 if job.take >= 0 else "")  # a take of ours, not a job collected by its id
        raise JobFailedError(f"GMI {remote.status} request {job.request_id}: {reason.rstrip('.')}.{again}",
                             request_id=job.request_id, status=remote.status, reason=reason)

    async def _video_url(self, client: GMIClient, job: Job, deadline: float) -> str:
        """The video's link: the recorded one, else GMI's record read again a few times (a success whose outcome
        named no video may fill in). Raises, keeping the paid job, when GMI still names none."""
        remote = None
        for attempt in range(self.URL_REREADS + 1):
            if job.media_url:
                return job.media_url
            if attempt == self.URL_REREADS:
                break
            if attempt:
                await self.sleep(self.poll.first)
            remote = await client.status(job.request_id, deadline=max(deadline, self.clock() + 60))
            if remote.status == "success":
                await self._finish(job, remote)
        what = describe_outcome(remote) if remote is not None else "nothing"
        raise JobFailedError(
            f"GMI reports request {job.request_id} done (paid) but names no video in it: {what}. It is kept and "
            "will not be submitted again: queue again later to look again, or collect it by its id.",
            request_id=job.request_id, status="success", reason="no video URL")

    DOWNLOAD_GRACE_S = 300.0  # a job that ends near its time limit still gets this long to be downloaded

    async def _download(self, client: GMIClient, job: Job, deadline: float, name: str | None = None) -> JobResult:
        url = await self._video_url(client, job, deadline)
        dest = self.output_dir / video_file_name(job.model_id, job.request_id, name)
        deadline = max(deadline, self.clock() + self.DOWNLOAD_GRACE_S)

        def progress(done: int, total: int | None) -> None:
            mb = f"{done / 1e6:.1f} of {total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
            self.on_progress(Progress("downloading", f"downloading {mb}", done / total if total else None,
                                      job.request_id))

        fetch = dict(request_id=job.request_id, on_progress=progress, deadline=deadline, verify=verify_video)
        try:
            await client.download(url, dest, **fetch)
        except OSError as exc:  # the output folder went read-only or full after paying: the job is kept
            if exc.errno not in WRITE_ERRORS:
                raise
            raise DownloadError(f"Could not write the video of request {job.request_id} into {self.output_dir} "
                                f"({exc.strerror or type(exc).__name__}): make room or make it writable, then queue "
                                "the same inputs again (nothing new is paid; it is just downloaded).") from None
        except DownloadError:
            # The recorded link may have expired: ask GMI once for the job's current one.
            remote = await client.status(job.request_id, deadline=self.clock() + 60)
            fresh = pick_video_url(remote.outcome) if remote.status == "success" else None
            if not fresh or fresh == url:
                raise
            job.media_url = fresh
            await self._record(job)
            await client.download(fresh, dest, **fetch)
        job.state, job.path, job.error = JobState.SAVED, str(dest), None
        await self._record(job)
        self.on_progress(Progress("saved", f"saved {dest.name}", 1.0, job.request_id))
        return JobResult(job.request_id, dest, reused=False)


def place_copy(source: Path, dest: Path) -> Path:
    """``source`` at ``dest`` as well: a hard link when both are on one disk, else a copy; atomic, never half there."""
    if dest.is_file() and os.path.samefile(source, dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = dest.with_name(f".{dest.name}.{os.getpid()}.link")
    temp.unlink(missing_ok=True)
    try:
        os.link(source, temp)
    except OSError:
        shutil.copy2(source, temp)
    os.replace(temp, dest)
    return dest


def describe_outcome(remote: RemoteJob) -> str:
    """What GMI returned, short, for a message (the client redacted it already)."""
    return f"status {remote.status!r}, outcome {json.dumps(remote.outcome)[:300]}"
