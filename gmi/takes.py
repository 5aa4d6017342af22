"""One take at a time: within this process (across ComfyUI's per-prompt event loops) and across processes that
share a journal (two ComfyUI servers on one user folder, or the command line beside ComfyUI)."""
from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Callable

from .errors import JournalError
from .governor import Waiters
from .journal import journal_trouble
from .net import Sleep


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
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # beside the journal: owner's only
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


def _try_lock_file_or_say_why(path: Path, key: str) -> bool:
    try:
        return _try_lock_take(path, key)
    except OSError as exc:  # the journal's folder is read-only, full or gone: one line, before anything is paid
        raise JournalError(journal_trouble(path, exc)) from None


@asynccontextmanager
async def holding_across_processes(path: Path, key: str, sleep: Sleep, retry_s: float,
                                   on_wait: Callable[[], None]) -> AsyncIterator[None]:
    """Exclusive hold of one take among processes sharing a journal; the second waits (cancellable), then finds
    the first's result in the journal. Take ``holding`` first: within one process the lock is shared."""
    waited = False
    while not _try_lock_file_or_say_why(path, key):
        if not waited:
            waited = True
            on_wait()
        await sleep(retry_s)
    try:
        yield
    finally:
        _unlock_take(path, key)
