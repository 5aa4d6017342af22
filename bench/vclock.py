"""Virtual time for benches of many concurrent jobs: the clock stands still while any job is doing something (a
request on loopback, a journal write, a download) and jumps to the next wake-up once every job is asleep or parked
behind another's governor place. Hours of polling then cost seconds, and concurrency is measured as it would be.

(tests/fakegmi.FakeTime advances on every sleep, so it suits one job at a time, not eight.)
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
from contextlib import asynccontextmanager


class VirtualTime:
    def __init__(self, start: float = 1000.0):
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._order = itertools.count()
        self._busy = 0
        self._changed: asyncio.Event | None = None

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        """Unix time that moves with the virtual clock."""
        return 1_790_000_000.0 + self.now

    def _kick(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._order), future))
        self._busy -= 1
        self._kick()
        try:
            await future
        except asyncio.CancelledError:
            if not future.done() or future.cancelled():
                self._busy += 1  # woken by the cancel, not by the clock
            raise

    def park_governor(self, governor) -> None:
        """Counts a job waiting for one of ``governor``'s places as idle (it waits on another job, not on time)."""
        enter = governor.job_slot

        @asynccontextmanager
        async def job_slot():
            self._busy -= 1
            self._kick()
            try:
                place = enter()
                await place.__aenter__()
            finally:
                self._busy += 1
            try:
                yield
            except BaseException as exc:
                if not await place.__aexit__(type(exc), exc, exc.__traceback__):
                    raise
            else:
                await place.__aexit__(None, None, None)

        governor.job_slot = job_slot

    async def run(self, coros) -> list:
        """Runs the jobs to the end under virtual time; returns their results (exceptions included)."""
        self._changed = asyncio.Event()

        async def tracked(coro):
            try:
                return await coro
            finally:
                self._busy -= 1
                self._kick()

        coros = list(coros)
        self._busy += len(coros)
        tasks = [asyncio.ensure_future(tracked(c)) for c in coros]
        while not all(t.done() for t in tasks):
            await self._changed.wait()
            self._changed.clear()
            for _ in range(20):  # let just-woken callbacks (a freed place, a finished read) run before judging
                await asyncio.sleep(0)
            if self._busy == 0 and self._sleepers and not self._changed.is_set():
                await asyncio.sleep(0.001)  # and any loopback answer in flight
                if self._busy == 0 and not self._changed.is_set():
                    self._advance()
            elif self._busy == 0 and self._sleepers:
                self._changed.set()
        return [asyncio.CancelledError() if t.cancelled() else (t.exception() or t.result()) for t in tasks]

    def _advance(self) -> None:
        self.now = max(self.now, self._sleepers[0][0])
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                self._busy += 1
                future.set_result(None)
        self._kick()
