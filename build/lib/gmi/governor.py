"""One process-wide policy for how much the pack asks of GMI at once, shared by every node and every event loop.

ComfyUI runs each prompt on a new event loop, so nothing here is loop-bound: state sits behind a threading lock and
each waiter parks on its own loop. Limits are requests per hour per organisation at GMI, so a 429 slows everyone.
"""
from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

DEFAULT_MAX_JOBS = 4          # jobs in flight (submitted, not yet downloaded)
DEFAULT_GAP = 0.25            # seconds between any two GMI API requests of this process
MAX_GAP = 30.0


class Waiters:
    """Futures parked on any event loop and woken from any thread: the loop-independent way to wait for a place.
    Callers park and drop under their own lock; ``wake_all`` is called after releasing it."""

    def __init__(self):
        self._items: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    def park(self) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._items.append((loop, waiter))
        return waiter

    def drop(self, waiter: asyncio.Future) -> None:
        self._items = [(lp, w) for lp, w in self._items if w is not waiter]

    def take_all(self) -> list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]:
        items, self._items = self._items, []
        return items

    @staticmethod
    def wake(items: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]) -> None:
        for loop, waiter in items:  # each re-checks; a loser parks again
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake, waiter)


class Governor:
    def __init__(self, max_jobs: int = DEFAULT_MAX_JOBS, gap: float = DEFAULT_GAP,
                 clock: Callable[[], float] = time.monotonic):
        self.max_jobs = max_jobs
        self.base_gap = gap
        self.gap = gap
        self.clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._waiters = Waiters()
        self._next_request = 0.0
        self._paused_until = 0.0
        self.peak_in_flight = 0

    @property
    def paused_until(self) -> float:
        """No request of this process goes out before this time (the governor's clock)."""
        return self._paused_until

    @asynccontextmanager
    async def job_slot(self) -> AsyncIterator[None]:
        """Holds one of ``max_jobs`` places for the remote part of a job (submit to download)."""
        while True:
            with self._lock:
                if self._in_flight < self.max_jobs:
                    self._in_flight += 1
                    self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
                    break
                waiter = self._waiters.park()
            try:
                await waiter
            except asyncio.CancelledError:
                with self._lock:
                    self._waiters.drop(waiter)
                raise
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                woken = self._waiters.take_all()
            Waiters.wake(woken)

    def reserve_request(self) -> float:
        """Books the next request time for the caller; returns how long it must wait first."""
        with self._lock:
            now = self.clock()
            at = max(now, self._next_request, self._paused_until)
            self._next_request = at + self.gap
            return at - now

    async def pace(self, sleep: Callable[[float], "asyncio.Future"] = asyncio.sleep) -> None:
        """Waits for this caller's turn to send a request to GMI."""
        wait = self.reserve_request()
        if wait > 0:
            await sleep(wait)

    def slow_down(self, retry_after: float | None) -> None:
        """GMI said 429: everyone waits (at least Retry-After), and requests are spaced twice as far for a while."""
        with self._lock:
            self.gap = min(MAX_GAP, max(self.gap * 2, self.base_gap))
            pause = retry_after if retry_after is not None else self.gap
            self._paused_until = max(self._paused_until, self.clock() + pause)

    def went_well(self) -> None:
        """A request succeeded: the spacing eases back towards normal."""
        with self._lock:
            if self.gap > self.base_gap:
                self.gap = max(self.base_gap, self.gap * 0.9)


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


_shared: Governor | None = None
_shared_lock = threading.Lock()


def shared_governor(max_jobs: int = DEFAULT_MAX_JOBS) -> Governor:
    """The process's governor (created on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Governor(max_jobs=max_jobs)
        return _shared
