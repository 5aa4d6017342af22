"""The job journal: one SQLite row per take, written before and after every remote side effect.

Each call opens its own connection, so it is safe from any thread or event loop. A fault of the file (deleted,
emptied, full disk, read-only, not a database) is one JournalError line, and a row lost under a running job is
written again.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Callable, TypeVar

from .errors import JournalError

log = logging.getLogger("gmi")
T = TypeVar("T")


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


class Journal:
    """SQLite record of every take. Each call opens its own connection: safe from any thread or event loop."""

    _COLUMNS = [f.name for f in fields(Job)]

    def __init__(self, path: Path):
        # Nothing is opened here: the nodes build a journal on the event loop, and every call below runs in a thread.
        self.path = Path(path).absolute()  # recorded paths and the lock file must not depend on the working folder
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
        if not self.path.exists():
            self._create_private()
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

    def _create_private(self) -> None:
        """A new journal is the owner's alone (prompts, media links): 0700 folder, 0600 file. SQLite gives its
        -wal and -shm files the main file's mode. Also where the file vanished under a running job."""
        self._ready = False
        if not self.path.parent.is_dir():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))

    def _use(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Runs ``work`` on a fresh connection. A table dropped under us is made again; any SQLite or OS fault
        becomes one JournalError line that names the file and what to do."""
        for attempt in (1, 2):
            try:
                with closing(self._connect()) as db:
                    return work(db)
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc) and attempt == 1:
                    self._ready = False  # emptied under us: prepare it again, then retry once
                    continue
                raise JournalError(journal_trouble(self.path, exc)) from None
            except (sqlite3.Error, OSError) as exc:
                raise JournalError(journal_trouble(self.path, exc)) from None
        raise AssertionError("unreachable")

    def _row_to_job(self, row: tuple | None) -> Job | None:
        if row is None:
            return None
        values = dict(zip(self._COLUMNS, row))
        values["payload"] = json.loads(values["payload"])
        values["state"] = JobState(values["state"])
        values["rehearsal"] = bool(values["rehearsal"])
        return Job(**values)

    def get(self, key: str) -> Job | None:
        row = self._use(lambda db: db.execute(f"SELECT {', '.join(self._COLUMNS)} FROM jobs WHERE key = ?",
                                              (key,)).fetchone())
        return self._row_to_job(row)

    def find_request(self, request_id: str) -> Job | None:
        row = self._use(lambda db: db.execute(f"SELECT {', '.join(self._COLUMNS)} FROM jobs WHERE request_id = ? "
                                              "ORDER BY updated_at DESC LIMIT 1", (request_id,)).fetchone())
        return self._row_to_job(row)

    def all(self) -> list[Job]:
        rows = self._use(lambda db: db.execute(f"SELECT {', '.join(self._COLUMNS)} FROM jobs "
                                               "ORDER BY created_at").fetchall())
        return [self._row_to_job(r) for r in rows]

    def keep(self, job: Job) -> None:
        """Writes ``job`` again if the journal lost it (the file deleted or emptied while the job ran)."""
        held = self.get(job.key)
        if held is None or held.request_id != job.request_id:
            log.warning("the job journal %s lost request %s; writing it again", self.path, job.request_id)
            self.record(job)

    def run_seconds(self, model_id: str) -> list[tuple[dict, float]]:
        """(payload, seconds from submit to done) of this model's finished real jobs, newest first (a rehearsal's
        seconds say nothing of GMI's)."""
        rows = self._use(lambda db: db.execute(
            "SELECT payload, finished_at - submit_started_at FROM jobs WHERE model_id = ? AND rehearsal = 0 AND "
            "finished_at IS NOT NULL AND submit_started_at IS NOT NULL ORDER BY finished_at DESC LIMIT 200",
            (model_id,)).fetchall())
        return [(json.loads(payload), seconds) for payload, seconds in rows if seconds and seconds > 0]

    def _values(self, job: Job) -> list:
        job.updated_at = time.time()
        job.created_at = job.created_at or job.updated_at
        values = [getattr(job, c) for c in self._COLUMNS]
        values[self._COLUMNS.index("payload")] = json.dumps(job.payload, sort_keys=True, ensure_ascii=False)
        values[self._COLUMNS.index("state")] = job.state.value
        return values

    def _insert(self, db: sqlite3.Connection, values: list) -> None:
        db.execute(f"INSERT OR REPLACE INTO jobs ({', '.join(self._COLUMNS)}) "
                   f"VALUES ({', '.join('?' * len(self._COLUMNS))})", values)

    def record(self, job: Job) -> None:
        """Write the whole row (insert or replace); ``updated_at`` is set now."""
        values = self._values(job)

        def write(db: sqlite3.Connection) -> None:
            with db:
                self._insert(db, values)

        self._use(write)

    def claim(self, job: Job) -> bool:
        """Records ``job`` as the take that made its request, unless another take already holds that request id (two
        takes never share one paid job), in one transaction against other processes. Returns whether it did."""
        values = self._values(job)

        def write(db: sqlite3.Connection) -> bool:
            db.execute("BEGIN IMMEDIATE")
            try:
                held = db.execute("SELECT 1 FROM jobs WHERE request_id = ? AND key != ? AND key NOT LIKE 'request:%' "
                                  "LIMIT 1", (job.request_id, job.key)).fetchone()
                if held is None:
                    self._insert(db, values)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return held is None

        return self._use(write)



def journal_trouble(path: Path, exc: BaseException) -> str:
    """One line for a journal fault: which file, what happened, what to do."""
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    try:
        full = shutil.disk_usage(path.parent).free < (1 << 20)  # SQLite often says only "disk I/O error"
    except OSError:
        full = False
    if full or "full" in lowered or getattr(exc, "errno", None) == 28:
        fix = "free some disk space"
    elif ("readonly" in lowered or "read-only" in lowered or isinstance(exc, PermissionError) or
          (path.parent.is_dir() and not os.access(path.parent, os.W_OK))):
        fix = "make the file and its folder writable, or point GMI_JOURNAL (command line: --journal) elsewhere"
    elif "not a database" in lowered or "malformed" in lowered:
        fix = ("move that file aside (it is not a job journal) or point GMI_JOURNAL (--journal) elsewhere; a new "
               "journal does not know the takes already paid for, so collect those by request id (the MP4s in the "
               "output folder are named after it) rather than queueing them again")
    elif isinstance(exc, IsADirectoryError) or "unable to open" in lowered:
        fix = "give the path of a file, not a folder, in a folder you can write"
    else:
        fix = "check the file and its folder"
    return f"The job journal {path} cannot be used ({text}): {fix}, then try again."
