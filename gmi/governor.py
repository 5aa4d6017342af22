"""One process-wide policy for how much the pack asks of GMI at once, shared by every node and every event loop.

ComfyUI runs each prompt on a new event loop, so nothing here is loop-bound: state sits behind a threading lock and
each waiter parks on its own loop. Limits are requests per hour per organisation at GMI, so a 429 pauses everyone:
for exactly the Retry-After GMI sends, or, when it sends none, for a pause of the pack's own that doubles while 429s
keep coming. Turns booked before the 429 are booked again after the pause; 429s answering requests sent before the
pause began add nothing; and once the pause is over, requests go at the normal spacing at once.
"""
from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

DEFAULT_MAX_JOBS = 4          # jobs in flight (submitted, not yet downloaded)
DEFAULT_GAP = 0.25            # seconds between any two GMI API requests of this process: at most 14,400 an hour
FIRST_PAUSE = 1.0             # a 429 without Retry-After pauses this long, doubling for each 429 in a row ...
MAX_PAUSE = 60.0
STREAK_S = 60.0               # ... where "in a row" means less than this many seconds after the previous pause


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
        self.gap = gap
        self.clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._waiters = Waiters()
        self._next_request = 0.0
        self._paused_until = 0.0
        self._streak = 0              # pauses in a row (429s that started one, less than STREAK_S apart)
        self.peak_in_flight = 0
        self.pauses = 0               # pauses GMI's 429s caused (figures for benches and logs)

    @property
    def paused_until(self) -> float:
        """No request of this process goes out before this time (the governor's clock)."""
        return self._paused_until

    def pause_left(self) -> float:
        """Seconds until GMI's rate limit lets this process ask again (0 when it is not rate-limited)."""
        with self._lock:
            return max(0.0, self._paused_until - self.clock())

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

    def _book(self) -> tuple[float, bool]:
        with self._lock:
            now = self.clock()
            at = max(now, self._next_request, self._paused_until)
            self._next_request = at + self.gap
            return at - now, now < self._paused_until

    def reserve_request(self) -> float:
        """Books the next request time for the caller; returns how long it must wait first."""
        return self._book()[0]

    async def pace(self, sleep: Callable[[float], "asyncio.Future"] = asyncio.sleep,
                   on_pause: Callable[[float], None] | None = None) -> None:
        """Waits for this caller's turn to send a request to GMI. ``on_pause(seconds)`` is told whenever the wait is
        GMI's rate limit (not mere spacing), so the caller can say "rate-limited by GMI, waiting N s"."""
        while True:
            wait, held = self._book()
            if held and on_pause is not None:
                on_pause(wait)
            if wait > 0:
                await sleep(wait)
            with self._lock:
                if self.clock() >= self._paused_until:
                    return
            # A 429 arrived while this caller slept: its turn fell inside the pause, so it books again after it.

    def slow_down(self, retry_after: float | None) -> None:
        """GMI said 429: everyone waits Retry-After, or a pause of the pack's own when GMI names none (1 s, doubling
        for each pause in a row, up to MAX_PAUSE). A 429 during a pause answers a request sent before it began: it can
        only make the pause longer when its own Retry-After says so."""
        with self._lock:
            now = self.clock()
            if now < self._paused_until:
                if retry_after is not None:
                    self._paused_until = max(self._paused_until, now + retry_after)
                return
            self._streak = min(self._streak + 1, 16) if now - self._paused_until < STREAK_S else 1
            pause = retry_after if retry_after is not None else min(MAX_PAUSE, FIRST_PAUSE * 2 ** (self._streak - 1))
            self._paused_until = now + pause
            self.pauses += 1

    def went_well(self) -> None:
        """A request succeeded. Nothing to undo: the spacing never widened, and the streak of pauses ends by itself
        after STREAK_S of quiet (one success says little about an hourly window)."""


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
