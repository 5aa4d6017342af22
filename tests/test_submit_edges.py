"""The edges of the POST: a Cancel or a rate-limit wait before it leaves, ComfyUI tearing the prompt's loop down or a
kill while it is out, a gateway's 503. Each case counts what GMI made (what is paid) and what the journal kept."""
from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid

import pytest
from aiohttp import web

from fakegmi import FakeGMI
from gmi_video_pack.gmi.budget import SpendCap
from gmi_video_pack.gmi.client import GMIClient, Timing
from gmi_video_pack.gmi.errors import JournalError
from gmi_video_pack.gmi.governor import Governor
from gmi_video_pack.gmi.jobs import Journal, JobRunner, JobState, PollPolicy, _gmi_rates
from gmi_video_pack.gmi.models import KLING_V3_T2V
from test_cli import cli, environment
from test_lifecycle import make_runner, payload, run


def journal(tmp_path) -> Journal:
    return Journal(tmp_path / "user" / "jobs.sqlite3")


def answer_late(gmi, seconds: float) -> None:
    """The next POST makes (and bills) the job at once, and answers only after ``seconds``."""
    gmi.faults["post_after_create"].append({"wait": seconds})


async def stop_hard(task: asyncio.Future) -> None:
    """Cancel, then cancel again (ComfyUI tearing the prompt down, or a second Ctrl-C): the run ends at once."""
    task.cancel()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- before the POST leaves: a Cancel pays nothing and leaves the take free ------------------------------------

async def test_cancel_while_the_rate_limit_holds_the_submit_sends_nothing(gmi, tmp_path):
    governor = Governor()
    governor.slow_down(retry_after=30.0)  # GMI said 429 to another job of this process
    _gmi_rates[(gmi.base_url + "/api/v1/ie/requestqueue/apikey", KLING_V3_T2V.model_id)] = None
    cap = SpendCap(2.0)
    runner = JobRunner(journal(tmp_path), lambda: GMIClient(gmi.base_url, gmi.key, timing=Timing()),
                       tmp_path / "output", governor=governor, budget=cap)
    task = asyncio.ensure_future(runner.run(KLING_V3_T2V, payload(), 0, timeout_s=600))
    for _ in range(100):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert gmi.post_bodies == [] and gmi.created == []
    assert cap.spent == 0
    assert all(job.state is JobState.FAILED for job in journal(tmp_path).all())  # free to queue again


async def test_cancel_while_submitting_is_recorded_sends_nothing_and_the_take_queues_again(gmi, fake_time, tmp_path,
                                                                                           monkeypatch):
    record, cap = Journal.record, SpendCap(2.0)

    def slow_record(self, job):
        record(self, job)
        if job.state is JobState.SUBMITTING:
            time.sleep(0.3)  # the disk is slow: the Cancel lands during this write

    monkeypatch.setattr(Journal, "record", slow_record)
    task = asyncio.ensure_future(run(gmi, fake_time, tmp_path, budget=cap))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gmi.post_bodies == []
    assert [job.state for job in journal(tmp_path).all()] == [JobState.FAILED]
    assert cap.spent == 0
    monkeypatch.setattr(Journal, "record", record)
    result = await run(gmi, fake_time, tmp_path, budget=cap)  # queued again: paid once, not "may be billed"
    assert gmi.created == [result.request_id]
    assert cap.spent == pytest.approx(1.26)


async def test_a_journal_fault_before_the_post_is_not_counted_against_the_cap(gmi, fake_time, tmp_path,
                                                                              monkeypatch):
    record, cap = Journal.record, SpendCap(2.0)  # room for one 5 s take with sound ($1.26)

    def full_disk(self, job):
        raise JournalError("The job journal cannot be used (database or disk is full): free some disk space.")

    monkeypatch.setattr(Journal, "record", full_disk)
    with pytest.raises(JournalError):
        await run(gmi, fake_time, tmp_path, budget=cap)
    assert gmi.post_bodies == [] and cap.spent == 0
    monkeypatch.setattr(Journal, "record", record)  # disk freed
    result = await run(gmi, fake_time, tmp_path, budget=cap)
    assert gmi.created == [result.request_id]


# --- a long rate-limit pause: the window a lost answer is searched in starts when the POST leaves ----------------

async def test_a_post_lost_after_a_long_rate_limit_pause_is_found_not_bought_again(gmi, fake_time, tmp_path):
    gmi.listing = True
    gmi.faults["post"].append({"status": 429, "body": {"error": "rate limited"}, "headers": {"Retry-After": "400"}})
    gmi.faults["post_after_create"].append("reset")  # the POST after the pause makes the job; its answer is lost
    governor = Governor(clock=fake_time.clock)

    def runner():
        r = make_runner(gmi, fake_time, tmp_path)
        r.governor = governor
        return r

    with pytest.raises(Exception):
        await runner().run(KLING_V3_T2V, payload(), 0, timeout_s=1800)
    assert len(gmi.created) == 1
    result = await runner().run(KLING_V3_T2V, payload(), 0, timeout_s=1800)
    assert gmi.created == [result.request_id]


# --- while the POST is out: ComfyUI's teardown, a kill --------------------------------------------------------

def serve_on_its_own_thread(clips):
    """The fake GMI on a loop of its own: the prompt's loop is asyncio.run's, torn down as ComfyUI does."""
    ready, box = threading.Event(), {}

    def main():
        loop = asyncio.new_event_loop()
        gmi = FakeGMI(clips)
        gmi.never_finish = True
        answer_late(gmi, 1.0)
        loop.run_until_complete(gmi.start())
        box["gmi"], box["loop"] = gmi, loop
        ready.set()
        loop.run_forever()

    threading.Thread(target=main, daemon=True).start()
    ready.wait()
    return box["gmi"], box["loop"]


def test_comfyui_tearing_the_prompt_down_during_the_post_keeps_the_paid_request_id(clips, tmp_path):
    gmi, loop = serve_on_its_own_thread(clips)
    try:
        def runner():
            return JobRunner(journal(tmp_path), lambda: GMIClient(gmi.base_url, gmi.key, timing=Timing()),
                             tmp_path / "output", poll=PollPolicy(first=0.2, cap=0.2))

        async def prompt():  # ComfyUI's execute_async: the node's task runs, a sibling fails, the prompt ends
            asyncio.ensure_future(runner().run(KLING_V3_T2V, payload(), 0, timeout_s=60))
            while not gmi.jobs:
                await asyncio.sleep(0.01)
            raise RuntimeError("a sibling node failed")

        with pytest.raises(RuntimeError):
            asyncio.run(prompt())  # its cleanup cancels every task of the loop, then waits for worker threads
        (job,) = journal(tmp_path).all()
        assert len(gmi.created) == 1
        assert (job.state, job.request_id) == (JobState.SUBMITTED, gmi.created[0])
    finally:
        loop.call_soon_threadsafe(loop.stop)


async def test_a_run_stopped_hard_during_the_post_then_queued_again_waits_for_the_answer(gmi, tmp_path):
    """The prompt torn down (the run cancelled twice) while the POST is out, then the take queued again at once: the
    new run waits for the answer the old one left on its way, and re-attaches to it."""
    answer_late(gmi, 0.5)

    def runner():
        return JobRunner(journal(tmp_path), lambda: GMIClient(gmi.base_url, gmi.key, timing=Timing()),
                         tmp_path / "output", poll=PollPolicy(first=0.05, cap=0.05))

    first = asyncio.ensure_future(runner().run(KLING_V3_T2V, payload(), 0, timeout_s=60))
    while not gmi.jobs:
        await asyncio.sleep(0.01)
    await stop_hard(first)
    result = await runner().run(KLING_V3_T2V, payload(), 0, timeout_s=60)
    assert gmi.created == [result.request_id] and len(gmi.post_bodies) == 1


@pytest.mark.parametrize("signals", [["SIGINT"], ["SIGINT", "SIGINT"], ["SIGTERM"], ["SIGHUP"], ["SIGTERM", "SIGINT"],
                                     ["SIGINT"] * 4, ["SIGINT", "SIGINT", "SIGTERM", "SIGINT", "SIGINT"]])
async def test_a_kill_during_the_post_keeps_the_paid_request_id(gmi, tmp_path, signals):
    """Ctrl-C (once, or twice in impatience), a kill, a closed terminal: the answer is waited for and recorded."""
    gmi.never_finish = True
    answer_late(gmi, 1.5)

    async def kill_during_post(proc):
        while not gmi.jobs:
            await asyncio.sleep(0.02)
        for name in signals:
            proc.send_signal(getattr(signal, name))
            await asyncio.sleep(0.3)

    code, out, err = await cli("generate", "--prompt", "a fox", "--out", str(tmp_path / "out"),
                               env=environment(gmi, tmp_path), until=kill_during_post)
    (job,) = Journal(tmp_path / "home" / "jobs.sqlite3").all()
    assert len(gmi.created) == 1
    assert (job.state, job.request_id) == (JobState.SUBMITTED, gmi.created[0])
    assert code == 130 and err.strip().splitlines()[-1].startswith("interrupted") and "Traceback" not in err, err
    assert "stopping once GMI answers the submit" in err
    assert len(gmi.post_bodies) == 1


# --- a gateway's 503 may stand in front of a backend that made the job -----------------------------------------

async def test_a_gateway_503_page_is_not_taken_for_nothing_made(gmi, fake_time, tmp_path):
    async def gateway_503_after_create(request):
        body = gmi.post_bodies[-1]
        rid = uuid.uuid4().hex
        gmi.jobs[rid] = {"rid": rid, "model": body["model"], "payload": body["payload"], "status": "queued",
                         "reads": 0, "created_at": int(gmi.wall())}
        return web.Response(status=503, text="<html><body>503 Service Unavailable</body></html>",
                            content_type="text/html")

    gmi.listing = True
    gmi.faults["post"].append(gateway_503_after_create)
    with pytest.raises(Exception) as err:
        await run(gmi, fake_time, tmp_path)
    assert "503" in str(err.value) and len(gmi.post_bodies) == 1
    result = await run(gmi, fake_time, tmp_path)  # queued again: the listing finds the job the 503 hid
    assert gmi.created == [result.request_id] and len(gmi.post_bodies) == 1


async def test_collect_keeps_the_file_in_the_output_folder_whatever_gmi_calls_the_model(gmi, fake_time, tmp_path):
    rid = gmi.add_console_job({"prompt": "from the console", "aspect_ratio": "16:9", "sound": "on"})
    gmi.jobs[rid]["model"] = "../../escaped/kling"
    result = await make_runner(gmi, fake_time, tmp_path).collect(rid, timeout_s=600)
    assert result.path.resolve().parent == (tmp_path / "output").resolve()
