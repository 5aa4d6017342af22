"""A stop while the POST is out whose answer is lost or cannot be recorded; a retry after GMI was busy; a rehearsal
cut by a failing sibling; nohup; a take adopting a job the user collected by id, and never another take's."""
from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time

import pytest

from gmi_video_pack.gmi import connect
from gmi_video_pack.gmi.budget import SpendCap
from gmi_video_pack.gmi.errors import JournalError, SubmitUnknownError
from gmi_video_pack.gmi.jobs import Journal, JobState, job_key
from gmi_video_pack.gmi.models import KLING_V3_T2V
from gmi_video_pack.gmi.progress import interrupted_text
from test_cli import ROOT, cli, environment
from test_lifecycle import make_runner, payload, run
from test_submit_edges import answer_late, stop_hard


def journal(tmp_path) -> Journal:
    return Journal(tmp_path / "user" / "jobs.sqlite3")


# --- a stop while the POST is out -------------------------------------------------------------------------------

async def test_a_cancel_during_a_post_whose_answer_is_lost_says_a_job_may_be_billed(gmi, fake_time, tmp_path):
    gmi.faults["post_after_create"].append({"wait": 0.5, "then": "cut"})  # made, billed, its answer lost
    task = asyncio.ensure_future(run(gmi, fake_time, tmp_path))
    while not gmi.jobs:
        await asyncio.sleep(0.01)
    task.cancel()  # Cancel: the run waits for the answer, which never comes
    with pytest.raises(SubmitUnknownError) as err:  # not a bare "interrupted", which the node shows as "nothing paid"
        await task
    assert "billed" in str(err.value) and "not be submitted again" in str(err.value)
    assert [job.state for job in journal(tmp_path).all()] == [JobState.SUBMIT_UNKNOWN] and len(gmi.created) == 1


def test_the_node_text_after_a_stop_while_submitting_does_not_claim_nothing_was_paid():
    text = interrupted_text(None, submitting=True)
    assert "nothing was paid" not in text and "Queue the same inputs again" in text


async def test_a_paid_id_the_journal_cannot_take_after_the_run_is_gone_is_in_the_log(gmi, fake_time, tmp_path,
                                                                                     monkeypatch, caplog):
    caplog.set_level("INFO", logger="gmi")
    answer_late(gmi, 0.5)
    record = Journal.record

    def full_after_post(self, job):
        if job.state is JobState.SUBMITTED:
            raise JournalError("The job journal cannot be used (database or disk is full): free some disk space.")
        record(self, job)

    monkeypatch.setattr(Journal, "record", full_after_post)
    task = asyncio.ensure_future(run(gmi, fake_time, tmp_path))
    while not gmi.jobs:
        await asyncio.sleep(0.01)
    await stop_hard(task)  # nobody waits for the answer any more
    for _ in range(200):
        if "could not record" in caplog.text:
            break
        await asyncio.sleep(0.01)
    (paid,) = gmi.created
    assert f"as request {paid}" in caplog.text and "could not record" in caplog.text


async def test_a_stop_during_a_retry_that_sent_nothing_frees_the_spend_cap(gmi, fake_time, tmp_path, monkeypatch):
    gmi.faults["post"].append({"status": 503, "body": {"error": "Upstream capacity temporarily exhausted"}})
    record, cap, in_write, submitting = Journal.record, SpendCap(2.0), threading.Event(), []

    def slow_record(self, job):
        record(self, job)
        if job.state is JobState.SUBMITTING:
            submitting.append(job.state)
            if len(submitting) == 2:  # the retry's SUBMITTING record, on a slow disk
                in_write.set()
                time.sleep(0.3)

    monkeypatch.setattr(Journal, "record", slow_record)
    task = asyncio.ensure_future(run(gmi, fake_time, tmp_path, budget=cap))
    while not in_write.is_set():
        await asyncio.sleep(0.01)
    await stop_hard(task)
    for _ in range(100):
        if journal(tmp_path).all()[0].state is JobState.FAILED:
            break
        await asyncio.sleep(0.01)
    assert len(gmi.post_bodies) == 1 and gmi.created == []  # the busy answer, then nothing sent
    assert [job.state for job in journal(tmp_path).all()] == [JobState.FAILED] and cap.spent == 0


def test_a_rehearsal_cut_by_a_failing_sibling_rehearses_again(tmp_path):
    path = tmp_path / "user" / "jobs.sqlite3"
    key = job_key(KLING_V3_T2V.model_id, payload(), 0, True)

    async def node():
        async with connect.open_runner(path, tmp_path / "out", tmp_path / "key", on_progress=lambda e: None,
                                       rehearsal_label="take 0") as runner:
            return await runner.run(KLING_V3_T2V, payload(), 0, timeout_s=60, rehearse=True)

    async def prompt():  # our node, then a sync sibling that holds the loop 0.5 s and fails: the stand-in is gone
        asyncio.ensure_future(node())
        while not (path.exists() and (job := Journal(path).get(key)) is not None and
                   job.state is JobState.SUBMITTING):
            await asyncio.sleep(0.001)
        time.sleep(0.5)
        raise RuntimeError("a sibling node failed")

    with pytest.raises(RuntimeError):
        asyncio.run(prompt())
    result = asyncio.run(node())  # queued again: a rehearsal is free, so its lost answer is just asked again
    assert result.path.is_file()


async def test_a_command_under_nohup_finishes_when_the_terminal_closes(gmi, tmp_path):
    answer_late(gmi, 1.0)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gmi", "generate", "--prompt", "a fox", "--duration", "3", "--out", str(tmp_path / "o"),
        cwd=ROOT, env=environment(gmi, tmp_path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # what nohup does
    while not gmi.jobs:
        await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGHUP)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    assert any((tmp_path / "o").glob("*.mp4"))


@pytest.mark.parametrize("home", ["~/gmi", "gmi-home"])
async def test_gmi_home_with_a_tilde_is_one_journal_and_a_relative_one_is_refused(gmi, tmp_path, home):
    gmi.finish_on_post = True
    env = {**environment(gmi, tmp_path), "GMI_HOME": home, "HOME": str(tmp_path / "userhome"), "PYTHONPATH": str(ROOT)}
    codes = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        code, out, err = await cli("generate", "--prompt", "a fox", "--out", str(tmp_path / "o"), env=env,
                                   cwd=tmp_path / folder)
        codes.append(code)
        if home.startswith("~"):
            assert code == 0, err
        else:
            assert code == 2 and "GMI_HOME must be an absolute path" in err and err.count("\n") == 1
    assert len(gmi.post_bodies) == (1 if home.startswith("~") else 0)
    if home.startswith("~"):
        assert (tmp_path / "userhome" / "gmi" / "jobs.sqlite3").is_file()


# --- a take adopting a job collected by id ----------------------------------------------------------------------

async def test_two_takes_whose_posts_were_out_together_never_adopt_the_same_collected_job(gmi, fake_time, tmp_path):
    gmi.faults["post_after_create"] += ["reset", "reset"]
    for take in (0, 1):
        with pytest.raises(SubmitUnknownError):
            await run(gmi, fake_time, tmp_path, take=take)
    first = gmi.created[0]
    await make_runner(gmi, fake_time, tmp_path).collect(first, timeout_s=600)  # the one id the console showed
    results = await asyncio.gather(run(gmi, fake_time, tmp_path, take=0), run(gmi, fake_time, tmp_path, take=1),
                                   return_exceptions=True)
    # Both POSTs were out when GMI made it, with the same payload: it may be either take's, so neither takes it.
    assert all(isinstance(r, SubmitUnknownError) for r in results)
    takes = [job.request_id for job in journal(tmp_path).all() if job.take >= 0]
    assert first not in takes and len(gmi.post_bodies) == 2


async def test_without_an_echo_a_job_another_lost_take_may_have_made_is_not_adopted(gmi, fake_time, tmp_path):
    gmi.faults["post_after_create"].append("reset")
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path, prompt="a red fox")
    gmi.faults["post"].append("reset")  # the owl's POST is cut before GMI makes anything
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path, prompt="a snowy owl")
    (fox_job,) = gmi.created
    gmi.jobs[fox_job]["echo"] = False
    await make_runner(gmi, fake_time, tmp_path).collect(fox_job, timeout_s=600)
    with pytest.raises(SubmitUnknownError):  # made while either POST was out: it cannot tell whose it is
        await run(gmi, fake_time, tmp_path, prompt="a snowy owl")
    assert len(gmi.post_bodies) == 2


async def test_a_job_collected_before_this_takes_post_left_is_another_takes(gmi, fake_time, tmp_path):
    """Take 0's answer lost, its job collected; then take 1 of the same prompt loses its answer too: take 1 must not
    take take 0's video (its own paid job would be lost), and take 0 still gets it."""
    gmi.faults["post_after_create"].append("reset")
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path, take=0)
    first = gmi.created[0]
    await make_runner(gmi, fake_time, tmp_path).collect(first, timeout_s=600)
    fake_time.now += 3
    gmi.faults["post_after_create"].append("reset")
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path, take=1)
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path, take=1)
    result = await run(gmi, fake_time, tmp_path, take=0)
    assert result.request_id == first and len(gmi.post_bodies) == 2
