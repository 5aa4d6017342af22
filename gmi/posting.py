"""The one POST that pays, with its journal records, out of reach of whatever happens to the run that asked for it.

ComfyUI ends a prompt with asyncio.run's cleanup: it cancels every task of the prompt's loop (shielded ones too), then
waits for worker threads. So the SUBMITTING record, the POST and the record of GMI's answer run on a worker thread with
an event loop of its own: nothing can come between GMI's answer and the journal, and a Cancel that arrives before the
POST leaves stops it there (nothing sent, the take free to queue again).
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Callable

from .client import GMIClient, RemoteJob
from .errors import GMIError, JournalError, SubmitUnknownError, UnrecordedJobError
from .journal import Job, JobState, Journal

log = logging.getLogger("gmi")


class Attempt:
    """One try at the POST: either it is stopped before it leaves, or it is sent; never both (one lock decides)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.stopped = self.sent = False

    def stop(self) -> bool:
        """No sending from now on; returns whether it had already left."""
        with self._lock:
            self.stopped = True
            return self.sent

    def send(self) -> bool:
        """Marks it sent, unless it was stopped first (then returns False)."""
        with self._lock:
            if not self.stopped:
                self.sent = True
            return self.sent


async def post_recorded(journal: Journal, client: GMIClient, job: Job, wire: dict, wall_clock: Callable[[], float],
                        attempt: Attempt, on_hold: Callable[[], None]) -> tuple[RemoteJob | None, bool]:
    """GMI's answer to the POST (None: stopped before sending), and whether a cancel arrived meanwhile. A cancel
    waits for the answer (it says whether a paid job exists), and ``on_hold`` says so; a second cancel leaves the
    thread to record it."""
    post = asyncio.ensure_future(asyncio.to_thread(_send, journal, client, job, wire, wall_clock, attempt))
    try:
        return await asyncio.shield(post), False
    except asyncio.CancelledError:
        if attempt.stop():
            on_hold()
        if post.cancelled():
            raise
    try:
        return await post, True
    except (SubmitUnknownError, JournalError):  # a job may be billed, or a paid id went unrecorded: say so
        raise
    except GMIError:  # refused or unreachable, recorded by the thread: nothing was made, and the run was stopped
        raise asyncio.CancelledError() from None


# Takes whose POST is out on a worker thread, whatever became of the run that sent it: a new run of the same take
# waits for the answer (else it would find SUBMITTING, 'answer lost', while the answer is on its way).
_in_flight: dict[str, threading.Event] = {}
_in_flight_lock = threading.Lock()


def answer_pending(key: str | None = None) -> bool:
    """Whether a POST of this take (of any take, without ``key``) is out on a worker thread."""
    with _in_flight_lock:
        return key in _in_flight if key is not None else bool(_in_flight)


def wait_for_all_answers(timeout: float) -> bool:
    """Blocks until every POST out on a worker thread is answered and recorded. Returns whether there was one."""
    with _in_flight_lock:
        pending = list(_in_flight.values())
    for done in pending:
        done.wait(timeout)
    return bool(pending)


def wait_for_answer(key: str, timeout: float) -> None:
    """Blocks (call it on a worker thread) until an earlier POST of this take is answered and recorded."""
    with _in_flight_lock:
        done = _in_flight.get(key)
    if done is not None:
        done.wait(timeout)


def _send(journal: Journal, client: GMIClient, job: Job, wire: dict, wall_clock: Callable[[], float],
          attempt: Attempt) -> RemoteJob | None:
    done = threading.Event()
    with _in_flight_lock:
        _in_flight[job.key] = done
    try:
        return _send_and_record(journal, client, job, wire, wall_clock, attempt)
    finally:
        with _in_flight_lock:
            if _in_flight.get(job.key) is done:
                del _in_flight[job.key]
        done.set()


def _send_and_record(journal: Journal, client: GMIClient, job: Job, wire: dict, wall_clock: Callable[[], float],
                     attempt: Attempt) -> RemoteJob | None:
    job.state, job.submit_started_at = JobState.SUBMITTING, wall_clock()
    journal.record(job)  # before the POST: a crash during it is then known
    if not attempt.send():
        job.state, job.error = JobState.FAILED, "stopped before submitting: nothing was sent"
        journal.record(job)
        return None

    async def post() -> RemoteJob:
        async with client.twin() as twin:
            return await twin.submit(job.model_id, wire, paced=True)

    try:
        remote = asyncio.run(post())
    except SubmitUnknownError as exc:
        job.state, job.error = JobState.SUBMIT_UNKNOWN, str(exc)
        journal.record(job)
        raise
    except GMIError as exc:  # refused, busy or unreachable: no job exists, the same take may retry
        job.state, job.error = JobState.FAILED, str(exc)
        journal.record(job)
        raise
    except BaseException as exc:
        job.state, job.error = JobState.SUBMIT_UNKNOWN, f"the submit stopped ({type(exc).__name__})"
        journal.record(job)
        raise
    # Logged at once, before the journal: the id reaches the log even if the run that asked has gone.
    log.info("GMI %s: submitted take %d as request %s", job.model_id, job.take, remote.request_id)
    job.state, job.request_id = JobState.SUBMITTED, remote.request_id
    try:
        journal.record(job)
    except JournalError as exc:
        # Paid, and the journal cannot say so: the id must reach the user whatever happens next.
        unrecorded = UnrecordedJobError(f"GMI accepted the job as request {remote.request_id}, but the journal "
                                        f"could not record it. {exc} Then collect it by that id (the Collect node, or "
                                        "the command line's collect) rather than queueing the take again.")
        log.error("%s", unrecorded)
        raise unrecorded from None
    return remote
