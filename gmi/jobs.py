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
import hashlib
import json
import logging
import os
import re
import sqlite3
import statistics
import threading
import time
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import AsyncIterator, Callable

from .client import Clock, GMIClient, RemoteJob, Sleep, backoff_delay, pick_video_url
from .errors import (DownloadError, GMIError, HTTPError, JobFailedError, JobTimeoutError, RateLimitedError,
                     SpendCapError, SubmitUnknownError)
from .governor import Governor, Waiters
from .models import CATALOGUE, ModelSpec, Price, parse_gmi_price

log = logging.getLogger("gmi")

RECONCILE_SKEW = 120.0  # seconds of clock difference allowed between this machine and GMI when matching a lost POST


class JobState(str, Enum):
    SUBMITTING = "submitting"          # the POST is being sent; a crash here leaves its outcome unknown
    SUBMIT_UNKNOWN = "submit_unknown"  # the POST was sent and its answer lost: a billed job may exist
    SUBMITTED = "submitted"            # GMI gave a request id; the job is not finished
    SUCCEEDED = "succeeded"            # GMI finished the job; the video is not saved yet
    SAVED = "saved"                    # the video is on disk
    FAILED = "failed"                  # refused at submit, or failed/cancelled at GMI: the same take may submit again


@dataclass
class Job:
    """One take of one model's inputs, as the journal keeps it."""

    key: str
    model_id: str
    payload: dict
    take: int
    state: JobState
    request_id: str | None = None
    media_url: str | None = None
    path: str | None = None
    error: str | None = None
    submit_started_at: float | None = None  # wall clock when the last POST began: the window to look it up in
    finished_at: float | None = None        # wall clock when GMI was seen to have finished it
    price: float | None = None              # estimated USD of the submit, when one was made
    rehearsal: bool = False                 # made by the free local stand-in: never serves a real take
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class JobResult:
    request_id: str
    path: Path
    reused: bool  # True when nothing was submitted or downloaded: the saved file served the run


@dataclass(frozen=True)
class Progress:
    """A lifecycle event for a progress bar: ``fraction`` of the current stage, 0..1, or None when unknown."""

    stage: str  # submitting | queued | processing | downloading | saved | reused
    text: str
    fraction: float | None = None
    request_id: str | None = None


# Share of a whole run (0..100) that each stage covers, for progress bars; decoding is the nodes' last step.
STAGE_SPANS = {"submitting": (0, 5), "queued": (5, 10), "processing": (10, 80), "downloading": (80, 90),
               "saved": (90, 90), "reused": (90, 90), "decoding": (90, 100)}


def percent_done(event: Progress, decoding_follows: bool = True) -> float:
    """How far the whole run is, 0..100, for a bar; without a decode to follow, a saved video is 100."""
    if not decoding_follows and event.stage in ("saved", "reused"):
        return 100.0
    low, high = STAGE_SPANS.get(event.stage, (0, 100))
    return low + (high - low) * (event.fraction if event.fraction is not None else 0.0)


@dataclass(frozen=True)
class PollPolicy:
    """Polling grows with the job's age: ``first`` seconds early on, up to ``cap``."""

    first: float = 3.0
    cap: float = 15.0
    growth: float = 0.1  # seconds of interval per second of age

    def interval(self, age: float) -> float:
        return min(self.cap, max(self.first, age * self.growth))


def job_key(model_id: str, payload: dict, take: int, rehearsal: bool = False) -> str:
    """Same model, same payload, same take: the same paid job. A rehearsal of it is another job."""
    what = {"model": model_id, "payload": payload, "take": take}
    if rehearsal:
        what["rehearsal"] = True
    canonical = json.dumps(what, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class Journal:
    """SQLite record of every take. Each call opens its own connection: safe from any thread or event loop."""

    _COLUMNS = [f.name for f in fields(Job)]

    def __init__(self, path: Path):
        # Nothing is opened here: the nodes build a journal on the event loop, and every call below runs in a thread.
        self.path = Path(path)
        self._ready = False
        self._ready_lock = threading.Lock()

    # Columns added after the first release of the table, with their SQL type (and default).
    _ADDED_LATER = {"submit_started_at": "REAL", "finished_at": "REAL", "price": "REAL",
                    "rehearsal": "INTEGER NOT NULL DEFAULT 0"}

    def _prepare(self, db: sqlite3.Connection) -> None:
        """Make the file a WAL journal with today's table. Several runners (a batch's takes, two prompts, the CLI
        beside ComfyUI) may do this at the same moment on a file that does not exist yet."""
        self._use_wal(db)
        db.execute("BEGIN IMMEDIATE")  # one preparer at a time: the others wait on SQLite's busy timeout
        try:
            db.execute("""CREATE TABLE IF NOT EXISTS jobs (
                key TEXT PRIMARY KEY, model_id TEXT NOT NULL, payload TEXT NOT NULL, take INTEGER NOT NULL,
                state TEXT NOT NULL, request_id TEXT, media_url TEXT, path TEXT, error TEXT,
                submit_started_at REAL, finished_at REAL, price REAL, rehearsal INTEGER NOT NULL DEFAULT 0,
                created_at REAL NOT NULL, updated_at REAL NOT NULL)""")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_request_id ON jobs(request_id)")
            # A journal written by an older version lacks later columns: add them, keeping every recorded take.
            have = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            for column, kind in self._ADDED_LATER.items():
                if column not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @staticmethod
    def _use_wal(db: sqlite3.Connection, patience_s: float = 30.0) -> None:
        """WAL lets the pollers read while one writes; the mode is stored in the file, so this is once per file.
        Switching answers "database is locked" at once (SQLite's busy timeout does not cover it) while another
        connection is creating the same file: wait for that one, a few milliseconds, instead of failing the run."""
        give_up, pause = time.monotonic() + patience_s, 0.002
        while True:
            try:
                if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > give_up:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")  # a recorded request id must survive a power cut
            with self._ready_lock:
                if not self._ready:
                    self._prepare(db)
                    self._ready = True
        except BaseException:
            db.close()
            raise
        return db

    def _row_to_job(self, row: tuple | None) -> Job | None:
        if row is None:
            return None
        values = dict(zip(self._COLUMNS, row))
        values["payload"] = json.loads(values["payload"])
        values["state"] = JobState(values["state"])
        values["rehearsal"] = bool(values["rehearsal"])
        return Job(**values)

    def get(self, key: str) -> Job | None:
        with closing(self._connect()) as db:
            row = db.execute(f"SELECT {', '.join(self._COLUMNS)} FROM jobs WHERE key = ?", (key,)).fetchone()
        return self._row_to_job(row)

    def find_request(self, request_id: str) -> Job | None:
        with closing(self._connect()) as db:
            row = db.execute(f"SELECT {', '.join(self._COLUMNS)} FROM jobs WHERE request_id = ? "
                             "ORDER BY updated_at DESC LIMIT 1", (request_id,)).fetchone()
        return self._row_to_job(row)

    def all(self) -> list[Job]:
        with closing(self._connect()) as db:
            rows = db.execute(f"SELECT {', '.join(self._COLUMNS)} FROM jobs ORDER BY created_at").fetchall()
        return [self._row_to_job(r) for r in rows]

    def run_seconds(self, model_id: str) -> list[tuple[dict, float]]:
        """(payload, seconds from submit to done) of this model's finished jobs, newest first."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT payload, finished_at - submit_started_at FROM jobs WHERE model_id = ? AND "
                              "finished_at IS NOT NULL AND submit_started_at IS NOT NULL ORDER BY finished_at DESC "
                              "LIMIT 200", (model_id,)).fetchall()
        return [(json.loads(payload), seconds) for payload, seconds in rows if seconds and seconds > 0]

    def record(self, job: Job) -> None:
        """Write the whole row (insert or replace); ``updated_at`` is set now."""
        job.updated_at = time.time()
        job.created_at = job.created_at or job.updated_at
        values = [getattr(job, c) for c in self._COLUMNS]
        values[self._COLUMNS.index("payload")] = json.dumps(job.payload, sort_keys=True, ensure_ascii=False)
        values[self._COLUMNS.index("state")] = job.state.value
        with closing(self._connect()) as db, db:
            db.execute(f"INSERT OR REPLACE INTO jobs ({', '.join(self._COLUMNS)}) "
                       f"VALUES ({', '.join('?' * len(self._COLUMNS))})", values)


# One holder per take in this process, whatever event loop it runs on (ComfyUI makes a new loop per prompt).
_holders_lock = threading.Lock()
_holders: dict[str, Waiters] = {}  # takes being run in this process -> who waits for them


@asynccontextmanager
async def holding(key: str) -> AsyncIterator[None]:
    """Exclusive hold of one take: a second node asking for the same take waits and then reuses the first's result.
    Works across ComfyUI's per-prompt event loops."""
    while True:
        with _holders_lock:
            if key not in _holders:
                _holders[key] = Waiters()
                break
            waiter = _holders[key].park()
        try:
            await waiter
        except asyncio.CancelledError:
            with _holders_lock:
                if key in _holders:
                    _holders[key].drop(waiter)
            raise
    try:
        yield
    finally:
        with _holders_lock:
            woken = _holders.pop(key).take_all()
        Waiters.wake(woken)


# The same take across processes: two ComfyUI servers on one user folder, or the CLI pointed at ComfyUI's journal.
# One byte per take is locked in a file beside the journal. The descriptor stays open for the life of the process:
# POSIX record locks belong to the process, and closing any descriptor of the file would drop all of them. The OS
# drops them too when the process dies, so a crash never leaves a take locked.
_lock_files: dict[str, int] = {}
_lock_files_guard = threading.Lock()


def _lock_file(path: Path) -> int:
    with _lock_files_guard:
        fd = _lock_files.get(str(path))
        if fd is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = _lock_files[str(path)] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        return fd


def _take_byte(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)  # 60 bits: two takes never share a byte


def _try_lock_take(path: Path, key: str) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process guard (the in-process one still holds)
        return True
    try:
        fcntl.lockf(_lock_file(path), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _take_byte(key))
    except (BlockingIOError, PermissionError):
        return False
    return True


def _unlock_take(path: Path, key: str) -> None:
    try:
        import fcntl
    except ImportError:
        return
    fcntl.lockf(_lock_file(path), fcntl.LOCK_UN, 1, _take_byte(key))


@asynccontextmanager
async def holding_across_processes(path: Path, key: str, sleep: Sleep, retry_s: float,
                                   on_wait: Callable[[], None]) -> AsyncIterator[None]:
    """Exclusive hold of one take among processes sharing a journal; the second waits (cancellable), then finds
    the first's result in the journal. Take ``holding`` first: within one process the lock is shared."""
    waited = False
    while not _try_lock_take(path, key):
        if not waited:
            waited = True
            on_wait()
        await sleep(retry_s)
    try:
        yield
    finally:
        _unlock_take(path, key)


class SpendCap:
    """What new submits of this process may cost in all (USD), if the user set a cap. Reusing or re-attaching
    costs nothing and never counts. Thread-safe: ComfyUI runs each prompt on a new event loop."""

    def __init__(self, limit: float | None = None):
        self.limit = limit
        self.spent = 0.0
        self._lock = threading.Lock()

    def reserve(self, price: Price) -> None:
        with self._lock:
            if self.limit is not None and self.spent + price.amount > self.limit + 1e-9:
                raise SpendCapError(
                    f"Spend cap reached: this take would cost about ${price.amount:.2f}, and ${self.spent:.2f} of the "
                    f"${self.limit:.2f} cap (GMI_SPEND_CAP_USD) is already spent this session. Raise the cap or "
                    f"restart ComfyUI to reset it; nothing was submitted.")
            self.spent += price.amount

    def release(self, price: Price) -> None:
        """A submit that created no job costs nothing."""
        with self._lock:
            self.spent = max(0.0, self.spent - price.amount)


# GMI's per-second price by (API root, model), asked once per process: loop-independent plain data.
_gmi_rates: dict[tuple[str, str], float | None] = {}


def expected_seconds(journal: Journal, spec: ModelSpec, payload: dict) -> tuple[float, bool]:
    """How long a job like this usually takes at GMI: the median of this machine's finished jobs of the same model,
    duration and sound; the catalogue's default before there are any. Returns (seconds, learned)."""
    group = spec.timing_group(payload)
    seen = [seconds for past, seconds in journal.run_seconds(spec.model_id) if spec.timing_group(past) == group]
    if not seen:
        return spec.default_eta(payload), False
    return statistics.median(seen[:50]), True  # the newest 50: GMI's speed changes over time


def describe_wait(stage: str, elapsed: float, eta: float | None) -> tuple[str, float | None]:
    """The text under the node while GMI works, and the bar's fraction of the wait."""
    def clock(seconds: float) -> str:
        seconds = int(seconds)
        return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"

    if stage == "queued" or eta is None:
        return f"{stage} at GMI, {clock(elapsed)}", None
    if elapsed <= eta:
        return f"processing at GMI, {clock(elapsed)} of about {clock(eta)}", min(0.95, elapsed / eta)
    return f"processing at GMI, {clock(elapsed)}: taking longer than usual (usually about {clock(eta)})", None


def video_file_name(model_id: str, request_id: str) -> str:
    """Unique per request: two nodes running at once never collide."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", request_id)[:80]
    return f"{model_id}_{safe}.mp4"


class JobRunner:
    """Runs one take through the lifecycle. ``connect`` makes a GMIClient (called only when the network is needed,
    so a saved take is served even without a key). To stop a run, cancel its task: the journal stays consistent."""

    def __init__(self, journal: Journal, connect: Callable[[], GMIClient], output_dir: Path, *,
                 clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep, poll: PollPolicy = PollPolicy(),
                 wall_clock: Clock = time.time, on_progress: Callable[[Progress], None] = lambda p: None,
                 budget: SpendCap | None = None, governor: Governor | None = None):
        self.journal = journal
        self.connect = connect
        self.output_dir = Path(output_dir)
        self.clock = clock
        self.wall_clock = wall_clock
        self.sleep = sleep
        self.poll = poll
        self.on_progress = on_progress
        self.budget = budget
        self.governor = governor

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
                yield client
            return
        async with self.governor.job_slot():
            async with self.connect() as client:
                client.governor = client.governor or self.governor
                yield client

    async def _record(self, job: Job) -> None:
        # Shielded: a cancel arriving mid-write must not lose what was just learned (a request id, a file).
        await asyncio.shield(asyncio.to_thread(self.journal.record, job))

    def _saved(self, job: Job | None) -> JobResult | None:
        if job is not None and job.state is JobState.SAVED and job.path and Path(job.path).is_file():
            self.on_progress(Progress("reused", f"reused saved video of request {job.request_id}", 1.0,
                                      job.request_id))
            return JobResult(job.request_id, Path(job.path), reused=True)
        return None

    async def run(self, spec: ModelSpec, payload: dict, take: int, *, timeout_s: float,
                  rehearse: bool = False) -> JobResult:
        """The saved video of this take, paying for it only if no earlier run already did. ``rehearse``: this runner
        talks to the free stand-in (gmi.rehearsal), and the journal keeps the result apart from real takes."""
        key = job_key(spec.model_id, payload, take, rehearse)
        deadline = self.clock() + timeout_s
        async with self._hold(key):
            job = await asyncio.to_thread(self.journal.get, key)
            if (reused := self._saved(job)) is not None:
                return reused
            if job is None or job.state is JobState.FAILED:
                job = Job(key=key, model_id=spec.model_id, payload=payload, take=take, state=JobState.SUBMITTING,
                          rehearsal=rehearse)
                fresh = True
            else:
                fresh = False
            async with self._remote() as client:
                if not fresh and job.state in (JobState.SUBMITTING, JobState.SUBMIT_UNKNOWN):
                    await self._reconcile(client, job)
                answer = await self._submit(client, job, deadline) if job.state is JobState.SUBMITTING else None
                return await self._drive(client, job, deadline, answer)

    async def collect(self, request_id: str, *, timeout_s: float) -> JobResult:
        """The video of an existing request, by its id: never submits anything."""
        request_id = request_id.strip()
        deadline = self.clock() + timeout_s
        known = await asyncio.to_thread(self.journal.find_request, request_id)
        key = known.key if known is not None else f"request:{request_id}"
        async with self._hold(key):
            job = await asyncio.to_thread(self.journal.get, key) if known is not None else None
            if (reused := self._saved(job)) is not None:
                return reused
            async with self._remote() as client:
                try:
                    remote = await client.status(request_id, deadline=deadline)
                except HTTPError as exc:
                    if exc.status in (400, 404):
                        raise GMIError(f"GMI has no request {request_id!r} (HTTP {exc.status}: {exc.gmi_text}). "
                                       "Copy the id from a request_id output, an error message or GMI's console.") \
                            from None
                    raise
                if job is None:
                    job = Job(key=key, model_id=str(remote.raw.get("model") or "gmi"), payload={}, take=-1,
                              state=JobState.SUBMITTED, request_id=request_id)
                if job.state is not JobState.SUCCEEDED or remote.terminal:
                    job.state = JobState.SUBMITTED
                    if remote.terminal:
                        await self._finish(job, remote)
                    else:
                        await self._record(job)
                return await self._drive(client, job, deadline)

    async def _drive(self, client: GMIClient, job: Job, deadline: float, known: RemoteJob | None = None) -> JobResult:
        if job.state is JobState.SUBMITTED:
            await self._wait(client, job, deadline, known)
        # SUCCEEDED, or SAVED with the file gone: fetch the video (again).
        return await self._download(client, job)

    async def price(self, client: GMIClient, spec: ModelSpec, payload: dict) -> Price:
        """The take's estimated price: GMI's own per-second rate when /models/{id} states one, else the table."""
        key = (client.api_root, spec.model_id)
        if key not in _gmi_rates:
            _gmi_rates[key] = parse_gmi_price(await client.model_info(spec.model_id))
        return spec.estimate_price(payload, _gmi_rates[key])

    async def _submit(self, client: GMIClient, job: Job, deadline: float) -> RemoteJob:
        job.request_id = job.media_url = job.path = job.error = job.finished_at = None
        spec = CATALOGUE.get(job.model_id)
        price = await self.price(client, spec, job.payload) if spec is not None and not job.rehearsal else None
        if price is not None and self.budget is not None:
            self.budget.reserve(price)
        job.price = price.amount if price is not None else None
        try:
            return await self._submit_paid(client, job, deadline, price)
        except BaseException:
            if price is not None and self.budget is not None and job.state is JobState.FAILED:
                self.budget.release(price)
            raise

    async def _submit_paid(self, client: GMIClient, job: Job, deadline: float, price: Price | None) -> RemoteJob:
        cost = f", estimated {price}" if price is not None else (" (rehearsal: nothing is paid)" if job.rehearsal else "")
        attempt = 0
        while True:
            job.state, job.submit_started_at = JobState.SUBMITTING, self.wall_clock()
            await self._record(job)  # before the POST: a crash during it is then known
            log.info("GMI %s: submitting take %d%s", job.model_id, job.take, cost)
            self.on_progress(Progress("submitting", f"submitting to GMI{cost}", 0.0))
            try:
                remote, cancelled = await self._post(client, job)
            except RateLimitedError as exc:  # nothing was created: wait and try again, within the deadline
                delay = backoff_delay(attempt, client.timing, exc.retry_after, client.rng)
                if self.clock() + delay > deadline:
                    await self._fail(job, str(exc))
                    raise
                log.info("GMI submit: HTTP %s, retrying in %.1fs", exc.status, delay)
                self.on_progress(Progress("submitting", f"GMI is busy (HTTP {exc.status}); retrying in {delay:.0f}s"))
                attempt += 1
                await self.sleep(delay)
                continue
            except SubmitUnknownError as exc:
                await self._mark_submit_unknown(job, str(exc))
            except GMIError as exc:
                await self._fail(job, str(exc))  # refused or unreachable: no job exists, the same take may retry
                raise
            break
        job.state, job.request_id = JobState.SUBMITTED, remote.request_id
        await self._record(job)
        log.info("GMI %s: submitted take %d as request %s", job.model_id, job.take, remote.request_id)
        if remote.terminal:
            await self._finish(job, remote)
        if cancelled:
            raise asyncio.CancelledError()
        return remote

    async def _post(self, client: GMIClient, job: Job) -> tuple[RemoteJob, bool]:
        """One POST, carried to its answer even when this run is cancelled meanwhile (the answer says whether a paid
        job exists). Returns the answer and whether a cancel arrived during it."""
        post = asyncio.ensure_future(client.submit(job.model_id, job.payload))
        try:
            return await asyncio.shield(post), False
        except asyncio.CancelledError:
            if post.cancelled():
                raise
        try:
            return await post, True
        except asyncio.CancelledError:  # cancelled twice (the prompt is being torn down): the answer is lost
            post.cancel()
            job.state, job.error = JobState.SUBMIT_UNKNOWN, "stopped while submitting"
            await asyncio.to_thread(self.journal.record, job)
            raise
        except SubmitUnknownError as exc:
            job.state, job.error = JobState.SUBMIT_UNKNOWN, str(exc)
        except GMIError as exc:  # refused, busy or unreachable: nothing was created
            job.state, job.error = JobState.FAILED, str(exc)
        await self._record(job)
        raise asyncio.CancelledError()

    async def _fail(self, job: Job, why: str) -> None:
        job.state, job.error = JobState.FAILED, why
        await self._record(job)

    async def _mark_submit_unknown(self, job: Job, why: str, candidates: list[str] | None = None) -> None:
        job.state, job.error = JobState.SUBMIT_UNKNOWN, why
        await self._record(job)
        found = (f" GMI lists jobs made then that may be it: {', '.join(candidates)}; collect one by its id."
                 if candidates else " Look in GMI's console for a request made at that time and collect it by its id.")
        raise SubmitUnknownError(
            f"{why.rstrip('.')}. So that it is not paid twice, this take will not be submitted again.{found} "
            f"Or change 'take' to pay for a new generation.")

    async def _reconcile(self, client: GMIClient, job: Job) -> None:
        """A POST whose answer was lost: find the job it made, or prove it made none, before any new POST."""
        why = job.error or "the previous run stopped while submitting"
        started = job.submit_started_at
        listing = await client.list_requests(job.model_id) if started is not None else None
        if listing is None:
            await self._mark_submit_unknown(job, why)
        known = {j.request_id for j in await asyncio.to_thread(self.journal.all)}
        window = [r for r in listing if r.request_id not in known
                  and isinstance(r.raw.get("created_at"), (int, float))
                  and started - RECONCILE_SKEW <= r.raw["created_at"] <= started + RECONCILE_SKEW + 300]
        exact = [r for r in window if r.raw.get("payload") == job.payload]
        if len(exact) == 1:
            log.info("GMI %s: found request %s for the lost submit of take %d", job.model_id, exact[0].request_id,
                     job.take)
            job.state, job.request_id, job.error = JobState.SUBMITTED, exact[0].request_id, None
            await self._record(job)
            if exact[0].terminal:
                await self._finish(job, exact[0])
            return
        if not window:
            # GMI lists no job of this model made around then: the lost POST created nothing. Submit again.
            log.info("GMI %s: the lost submit of take %d made no job; submitting", job.model_id, job.take)
            job.state = JobState.SUBMITTING
            return
        await self._mark_submit_unknown(job, why, [r.request_id for r in window])

    async def _wait(self, client: GMIClient, job: Job, deadline: float, known: RemoteJob | None = None) -> None:
        """Polls until GMI finishes the job. ``known``: a status just read (the POST's answer), so the first read
        waits one interval instead of asking again at once."""
        started = self.clock()
        since = job.submit_started_at or self.wall_clock()  # elapsed counts from the submit, also after a re-attach
        spec = CATALOGUE.get(job.model_id)
        eta = (await asyncio.to_thread(expected_seconds, self.journal, spec, job.payload))[0] \
            if spec is not None and job.payload else None
        while True:
            remote, known = known or await client.status(job.request_id, deadline=deadline), None
            if remote.terminal:
                await self._finish(job, remote)
                return
            stage = "queued" if remote.status in ("created", "queued") else "processing"
            text, fraction = describe_wait(stage, self.wall_clock() - since, eta)
            self.on_progress(Progress(stage, f"{text} (request {job.request_id})", fraction, job.request_id))
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise JobTimeoutError(
                    f"Request {job.request_id} is still {remote.status} at GMI after the time limit. It is kept: "
                    f"queue the same inputs again (or raise timeout_minutes) to collect it without paying again.",
                    request_id=job.request_id)
            await self.sleep(min(self.poll.interval(self.clock() - started), remaining))

    async def _finish(self, job: Job, remote: RemoteJob) -> None:
        if remote.status == "success":
            url = pick_video_url(remote.outcome)
            if url is None:
                await self._fail(job, "success without a video URL")
                raise JobFailedError(f"GMI reports request {job.request_id} done but gave no video URL "
                                     f"(outcome: {json.dumps(remote.outcome)[:300]}).",
                                     request_id=job.request_id, status=remote.status, reason="no video URL")
            job.state, job.media_url = JobState.SUCCEEDED, url
            job.finished_at = job.finished_at or self.wall_clock()
            await self._record(job)
            return
        reason = remote.failure_reason()
        await self._fail(job, f"{remote.status}: {reason}")
        raise JobFailedError(f"GMI {remote.status} request {job.request_id}: {reason}",
                             request_id=job.request_id, status=remote.status, reason=reason)

    async def _download(self, client: GMIClient, job: Job) -> JobResult:
        dest = self.output_dir / video_file_name(job.model_id, job.request_id)

        def progress(done: int, total: int | None) -> None:
            mb = f"{done / 1e6:.1f} of {total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
            self.on_progress(Progress("downloading", f"downloading {mb}", done / total if total else None,
                                      job.request_id))

        try:
            await client.download(job.media_url, dest, request_id=job.request_id, on_progress=progress)
        except DownloadError:
            # The recorded link may have expired: ask GMI once for the job's current one.
            remote = await client.status(job.request_id, deadline=self.clock() + 60)
            fresh = pick_video_url(remote.outcome) if remote.status == "success" else None
            if not fresh or fresh == job.media_url:
                raise
            job.media_url = fresh
            await self._record(job)
            await client.download(fresh, dest, request_id=job.request_id, on_progress=progress)
        job.state, job.path, job.error = JobState.SAVED, str(dest), None
        await self._record(job)
        self.on_progress(Progress("saved", f"saved {dest.name}", 1.0, job.request_id))
        return JobResult(job.request_id, dest, reused=False)
