"""One governor for the whole process: jobs in flight capped, requests spaced, a 429 slows everyone."""
from __future__ import annotations

import asyncio
import threading

import pytest

from gmi_video_pack.gmi.governor import Governor


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_requests_are_spaced_across_callers():
    clock = Clock()
    gov = Governor(gap=0.5, clock=clock)
    assert [gov.reserve_request() for _ in range(4)] == [0.0, 0.5, 1.0, 1.5]
    clock.now = 10.0
    assert gov.reserve_request() == 0.0


def test_a_429_pauses_everyone_for_retry_after_and_widens_the_spacing():
    clock = Clock()
    gov = Governor(gap=0.5, clock=clock)
    gov.reserve_request()
    gov.slow_down(retry_after=20)
    waits = [gov.reserve_request() for _ in range(3)]
    assert waits[0] >= 20 and waits[1] - waits[0] == pytest.approx(1.0)  # the gap doubled
    for _ in range(30):
        gov.went_well()
    assert gov.gap == pytest.approx(0.5)


async def test_jobs_in_flight_never_exceed_the_cap():
    gov = Governor(max_jobs=3)
    inside, peak, release = 0, 0, asyncio.Event()

    async def job():
        nonlocal inside, peak
        async with gov.job_slot():
            inside += 1
            peak = max(peak, inside)
            await release.wait()
            inside -= 1

    tasks = [asyncio.ensure_future(job()) for _ in range(10)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert inside == 3
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 3 and gov.peak_in_flight == 3


async def test_a_place_freed_on_another_event_loop_wakes_this_one():
    # ComfyUI runs each prompt on a new loop: the cap must hold across them.
    gov = Governor(max_jobs=1)
    held, free = threading.Event(), threading.Event()

    def other_prompt():
        async def hold():
            async with gov.job_slot():
                held.set()
                await asyncio.to_thread(free.wait)
        asyncio.run(hold())

    thread = threading.Thread(target=other_prompt)
    thread.start()
    await asyncio.to_thread(held.wait)
    waiting = asyncio.ensure_future(gov.job_slot().__aenter__())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    free.set()
    await asyncio.wait_for(waiting, 5)
    thread.join()


async def test_cancelled_waiter_gives_up_its_turn_cleanly():
    gov = Governor(max_jobs=1)
    async with gov.job_slot():
        waiter = asyncio.ensure_future(gov.job_slot().__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    async with gov.job_slot():
        pass


async def test_many_concurrent_takes_respect_the_cap_and_all_finish(gmi, fake_time, tmp_path):
    from gmi_video_pack.gmi.models import KLING_V3_T2V
    from test_lifecycle import make_runner, payload

    gov = Governor(max_jobs=2, gap=0.0)

    async def take(n):
        runner = make_runner(gmi, fake_time, tmp_path)
        runner.governor = gov
        return await runner.run(KLING_V3_T2V, payload(), n, timeout_s=3600)

    results = await asyncio.gather(*(take(n) for n in range(8)))
    assert len({r.request_id for r in results}) == 8 and len(gmi.created) == 8
    assert max(gmi.open_at_post) <= 2 and gov.peak_in_flight == 2


async def test_a_429_seen_by_one_job_slows_the_governor_for_all(gmi, fake_time, tmp_path):
    from gmi_video_pack.gmi.client import GMIClient
    from test_lifecycle import FAST

    gov = Governor(max_jobs=4, gap=0.5, clock=fake_time.clock)
    gmi.faults["status"].append({"status": 429, "body": {"error": "rate limit"}, "headers": {"Retry-After": "30"}})
    async with GMIClient(gmi.base_url, gmi.key, timing=FAST, sleep=fake_time.sleep, clock=fake_time.clock,
                         governor=gov) as client:
        rid = (await client.submit("kling-v3-text-to-video", {"prompt": "x"})).request_id
        seen_at = fake_time.now
        await client.status(rid, deadline=fake_time.now + 600)
    assert gov.paused_until >= seen_at + 30  # every caller of this governor waited, not only this job
    assert fake_time.now - seen_at >= 30 and gov.gap > 0.5
