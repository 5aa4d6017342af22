"""The fault matrix: each case asserts what the user sees and how many jobs were paid for (POSTs made)."""
from __future__ import annotations

import asyncio
import logging
import shutil

import pytest

from gmi_video_pack.gmi.errors import DownloadError, GMIError, JobFailedError, SubmitUnknownError
from gmi_video_pack.gmi.jobs import Journal, JobState
from gmi_video_pack.gmi.models import KLING_V3_T2V
from test_lifecycle import make_runner, payload, run


class Crash(BaseException):
    """Stands for the process dying at that exact point (nothing after it runs)."""


def journal(tmp_path) -> Journal:
    return Journal(tmp_path / "user" / "jobs.sqlite3")


def only_job(tmp_path):
    (job,) = journal(tmp_path).all()
    return job


# --- rate limits and transient faults --------------------------------------------------------------------------

async def test_503_on_submit_backs_off_and_pays_once(gmi, fake_time, tmp_path):
    gmi.faults["post"] += [{"status": 503, "body": {"error": "Upstream capacity temporarily exhausted; please retry "
                                                             "later"}}] * 2
    result = await run(gmi, fake_time, tmp_path)
    assert len(gmi.post_bodies) == 3 and gmi.created == [result.request_id]
    assert len(fake_time.slept) >= 2


async def test_rate_limit_past_the_deadline_gives_up_with_gmi_text(gmi, fake_time, tmp_path):
    gmi.faults["post"] += [{"status": 429, "body": {"error": "rate limit exceeded"}, "headers": {"Retry-After": "100"}}] * 9
    with pytest.raises(GMIError, match="HTTP 429: rate limit exceeded"):
        await run(gmi, fake_time, tmp_path, timeout_s=250)
    assert gmi.created == [] and only_job(tmp_path).state is JobState.FAILED


async def test_retry_after_jitter_never_waits_less_than_asked(gmi, fake_time, tmp_path):
    gmi.faults["post"] += [{"status": 429, "body": {"error": "slow down"}, "headers": {"Retry-After": "5"}}] * 3
    await run(gmi, fake_time, tmp_path)
    assert all(wait >= 5 for wait in fake_time.slept[:3])


@pytest.mark.parametrize("fault", [{"status": 500, "body": {"error": "internal"}}, {"status": 502, "body": {}},
                                   {"status": 504, "body": {}}, "reset", "malformed"])
async def test_status_read_faults_are_retried(gmi, fake_time, tmp_path, clips, fault):
    gmi.faults["status"] += [fault, fault]
    result = await run(gmi, fake_time, tmp_path)
    assert len(gmi.post_bodies) == 1
    assert result.path.read_bytes() == clips[("16:9", True)].read_bytes()


async def test_status_faults_that_never_end_give_up_keeping_the_job(gmi, fake_time, tmp_path):
    gmi.faults["status"] += ["reset"] * 50
    with pytest.raises(GMIError, match="re-attach") as err:
        await run(gmi, fake_time, tmp_path)
    assert gmi.created[0] in str(err.value)
    assert only_job(tmp_path).state is JobState.SUBMITTED
    gmi.faults["status"].clear()
    result = await run(gmi, fake_time, tmp_path)  # GMI is back: the same job is collected
    assert result.request_id == gmi.created[0] and len(gmi.post_bodies) == 1


# --- submits whose answer was lost -----------------------------------------------------------------------------

async def test_lost_submit_answer_without_a_lookup_tells_the_user_and_never_resubmits(gmi, fake_time, tmp_path):
    gmi.faults["post_after_create"].append("reset")
    with pytest.raises(SubmitUnknownError) as err:
        await run(gmi, fake_time, tmp_path)
    message = str(err.value)
    assert "not be submitted again" in message and "take" in message and "console" in message
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path)
    assert len(gmi.post_bodies) == 1


async def test_without_a_listing_collecting_the_id_as_told_then_queueing_again_pays_once(gmi, fake_time, tmp_path):
    gmi.faults["post_after_create"].append("reset")
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path)
    console = gmi.add_console_job({"prompt": "something else", "aspect_ratio": "16:9", "sound": "on"})
    await make_runner(gmi, fake_time, tmp_path).collect(console, timeout_s=600)  # not this take's job
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path)
    collected = await make_runner(gmi, fake_time, tmp_path).collect(gmi.created[0], timeout_s=600)  # its own
    result = await run(gmi, fake_time, tmp_path)  # the take is queued again: it is that video
    assert result.reused and result.path == collected.path and result.request_id == gmi.created[0]
    assert len(gmi.post_bodies) == 1 and len(gmi.media_requests) == 2  # no new job, no second download


async def test_without_a_listing_a_collected_job_without_an_echo_made_then_is_the_take(gmi, fake_time, tmp_path):
    gmi.faults["post_after_create"].append("reset")
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path)
    gmi.jobs[gmi.created[0]]["echo"] = False  # GMI echoes no payload; its date is while the POST was out
    await make_runner(gmi, fake_time, tmp_path).collect(gmi.created[0], timeout_s=600)
    result = await run(gmi, fake_time, tmp_path)
    assert result.request_id == gmi.created[0] and len(gmi.post_bodies) == 1


async def test_without_a_listing_a_collected_job_of_another_time_is_not_taken_for_the_take(gmi, fake_time, tmp_path):
    gmi.faults["post_after_create"].append("reset")
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path)
    gmi.jobs[gmi.created[0]]["echo"] = False  # the echo cannot tell
    gmi.jobs[gmi.created[0]]["created_at"] -= 3600  # and GMI dates it an hour before the lost POST
    await make_runner(gmi, fake_time, tmp_path).collect(gmi.created[0], timeout_s=600)
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path)
    assert len(gmi.post_bodies) == 1


async def test_lost_submit_answer_is_found_by_lookup_and_collected(gmi, fake_time, tmp_path, clips):
    gmi.listing = True
    gmi.faults["post_after_create"].append("reset")
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path)
    result = await run(gmi, fake_time, tmp_path)
    assert len(gmi.post_bodies) == 1 and result.request_id == gmi.created[0]
    assert result.path.read_bytes() == clips[("16:9", True)].read_bytes()


async def test_lost_submit_that_made_no_job_is_submitted_once_more(gmi, fake_time, tmp_path):
    gmi.listing = True
    gmi.faults["post"].append({"status": 500, "body": {"error": "Backend error (400). Please try again."}})
    with pytest.raises(SubmitUnknownError, match="Backend error"):
        await run(gmi, fake_time, tmp_path)
    result = await run(gmi, fake_time, tmp_path)
    assert len(gmi.post_bodies) == 2 and gmi.created == [result.request_id]


async def test_lost_submit_with_unclear_lookup_lists_the_candidates(gmi, fake_time, tmp_path):
    gmi.listing = True
    gmi.faults["post_after_create"].append("reset")
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path)
    other = gmi.add_console_job({"prompt": "something else"})
    gmi.jobs[gmi.created[0]]["echo"] = False  # GMI echoes payloads unreliably
    with pytest.raises(SubmitUnknownError) as err:
        await run(gmi, fake_time, tmp_path)
    assert gmi.created[0] in str(err.value) and other in str(err.value)
    assert len(gmi.post_bodies) == 1


async def test_unreachable_gmi_submits_nothing_and_the_take_may_retry(gmi, fake_time, tmp_path):
    url = gmi.base_url
    await gmi.stop()
    with pytest.raises(GMIError, match="Could not reach GMI.*nothing was submitted"):
        await run(gmi, fake_time, tmp_path)
    assert only_job(tmp_path).state is JobState.FAILED
    assert url


# --- downloads ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [404, 403])
async def test_media_gone_is_reported_with_the_request_id(gmi, fake_time, tmp_path, status):
    gmi.faults["media"] += [{"status": status, "body": {"error": "NoSuchKey"}}] * 2
    with pytest.raises(DownloadError) as err:
        await run(gmi, fake_time, tmp_path)
    assert gmi.created[0] in str(err.value) and f"HTTP {status}" in str(err.value)
    assert not list((tmp_path / "output").glob("*"))
    assert only_job(tmp_path).state is JobState.SUCCEEDED  # paid and known: a later queue downloads it


async def test_download_that_keeps_breaking_is_never_handed_on(gmi, fake_time, tmp_path):
    gmi.faults["media"] += ["truncate"] * 10
    with pytest.raises(DownloadError, match="could not be downloaded whole"):
        await run(gmi, fake_time, tmp_path)
    assert not list((tmp_path / "output").glob("*.mp4")) and not list((tmp_path / "output").glob(".*"))
    gmi.faults["media"].clear()
    result = await run(gmi, fake_time, tmp_path)
    assert result.path.is_file() and len(gmi.post_bodies) == 1


# --- cancel and restart at each stage ----------------------------------------------------------------------------

async def test_cancel_while_polling_keeps_the_job_and_requeue_collects_it(gmi, fake_time, tmp_path):
    gmi.never_finish = True
    task = asyncio.ensure_future(run(gmi, fake_time, tmp_path))
    while gmi.status_reads() < 2:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert only_job(tmp_path).state is JobState.SUBMITTED
    gmi.never_finish = False
    result = await run(gmi, fake_time, tmp_path)
    assert result.request_id == gmi.created[0] and len(gmi.post_bodies) == 1


async def test_cancel_during_the_post_waits_for_its_answer_and_keeps_the_job(gmi, fake_time, tmp_path):
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow_post(request):
        arrived.set()
        await release.wait()
        return None  # then the normal answer

    gmi.faults["post"].append(slow_post)
    original = gmi._fault

    async def fault(route, request, job=None):
        action = gmi.faults[route][0] if gmi.faults[route] else None
        if action is slow_post:
            gmi.faults[route].pop(0)
            return await slow_post(request)
        return await original(route, request, job)

    gmi._fault = fault
    task = asyncio.ensure_future(run(gmi, fake_time, tmp_path))
    await arrived.wait()
    task.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    job = only_job(tmp_path)
    assert job.state is JobState.SUBMITTED and job.request_id == gmi.created[0]
    result = await run(gmi, fake_time, tmp_path)
    assert result.request_id == gmi.created[0] and len(gmi.post_bodies) == 1


async def test_crash_right_after_the_post_is_reconciled_without_paying_again(gmi, fake_time, tmp_path, monkeypatch):
    gmi.listing = True
    record = Journal.record

    def crash_when_id_arrives(self, job):
        if job.state is JobState.SUBMITTED:
            raise Crash()
        record(self, job)

    monkeypatch.setattr(Journal, "record", crash_when_id_arrives)
    with pytest.raises(Crash):
        await run(gmi, fake_time, tmp_path)
    monkeypatch.setattr(Journal, "record", record)
    assert only_job(tmp_path).state is JobState.SUBMITTING and len(gmi.created) == 1
    result = await run(gmi, fake_time, tmp_path)
    assert result.request_id == gmi.created[0] and len(gmi.post_bodies) == 1


async def test_crash_during_download_downloads_again_without_paying(gmi, fake_time, tmp_path, clips):
    runner = make_runner(gmi, fake_time, tmp_path)

    def crash_mid_download(event):
        if event.stage == "downloading":
            raise Crash()

    runner.on_progress = crash_mid_download
    with pytest.raises(Crash):
        await runner.run(KLING_V3_T2V, payload(), 0, timeout_s=600)
    assert only_job(tmp_path).state is JobState.SUCCEEDED
    assert not list((tmp_path / "output").glob("*.mp4"))
    result = await run(gmi, fake_time, tmp_path)
    assert len(gmi.post_bodies) == 1 and result.path.read_bytes() == clips[("16:9", True)].read_bytes()


async def test_crash_after_saving_reuses_the_file(gmi, fake_time, tmp_path):
    # Decoding happens after the journal records the file: a crash there loses nothing.
    first = await run(gmi, fake_time, tmp_path)
    result = await run(gmi, fake_time, tmp_path)
    assert result.reused and result.path == first.path and len(gmi.post_bodies) == 1


# --- collecting by request id ------------------------------------------------------------------------------------

async def test_collect_by_request_id_submits_nothing(gmi, fake_time, tmp_path, clips):
    rid = gmi.add_console_job({"prompt": "from the console", "aspect_ratio": "1:1", "sound": "off"}, status="queued")
    runner = make_runner(gmi, fake_time, tmp_path)
    result = await runner.collect(rid, timeout_s=600)
    assert result.request_id == rid and gmi.post_bodies == []
    assert result.path.read_bytes() == clips[("1:1", False)].read_bytes()
    again = await make_runner(gmi, fake_time, tmp_path).collect(rid, timeout_s=600)
    assert again.reused


async def test_collect_of_a_take_in_the_journal_is_reused_by_the_take(gmi, fake_time, tmp_path):
    gmi.never_finish = True
    with pytest.raises(GMIError):
        await run(gmi, fake_time, tmp_path, timeout_s=60)
    gmi.never_finish = False
    await make_runner(gmi, fake_time, tmp_path).collect(gmi.created[0], timeout_s=600)
    result = await run(gmi, fake_time, tmp_path)
    assert result.reused and len(gmi.post_bodies) == 1


async def test_collect_unknown_id_is_one_clear_line(gmi, fake_time, tmp_path):
    with pytest.raises(GMIError) as err:
        await make_runner(gmi, fake_time, tmp_path).collect("0123456789abcdef", timeout_s=60)
    assert "no request '0123456789abcdef'" in str(err.value) and "HTTP 404" in str(err.value)
    assert journal(tmp_path).all() == []


async def test_collect_failed_id_gives_gmi_reason(gmi, fake_time, tmp_path):
    rid = gmi.add_console_job({"prompt": "x"}, status="failed")
    with pytest.raises(JobFailedError, match="Content rejected by safety filter") as err:
        await make_runner(gmi, fake_time, tmp_path).collect(rid, timeout_s=60)
    assert "Queueing" not in str(err.value)  # collecting submits nothing: no advice about queueing inputs


# --- the key never leaks ----------------------------------------------------------------------------------------

async def test_key_appears_in_no_artefact_of_runs_good_and_bad(gmi, fake_time, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    messages = []
    await run(gmi, fake_time, tmp_path)
    for setup in (lambda: setattr(gmi, "final_status", "failed"),
                  lambda: gmi.faults["post"].append({"status": 400, "body": {"error": f"bad key {gmi.key}"}}),
                  lambda: gmi.faults["post"].append({"status": 500, "body": {"error": f"echo {gmi.key}"}}),
                  lambda: gmi.faults["status"].extend([{"status": 401, "body": {"error": f"no {gmi.key}"}}])):
        setup()
        try:
            await run(gmi, fake_time, tmp_path, take=len(messages) + 1)
        except GMIError as exc:
            messages.append(str(exc))
    assert len(messages) == 4
    texts = messages + [caplog.text]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".mp4" for p in files) and any("jobs.sqlite3" in p.name for p in files)
    key = gmi.key.encode()
    assert not [t for t in texts if gmi.key in t]
    assert not [p for p in files if key in p.read_bytes()]
    assert all("Authorization" not in h for _, h in gmi.media_requests)


# --- the journal ---------------------------------------------------------------------------------------------------

def test_a_new_journal_opened_by_several_runners_at_once_works_for_all(tmp_path):
    """A batch's takes, two prompts, or the CLI beside ComfyUI may all open a journal that does not exist yet."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    def first_use(path, start: threading.Barrier) -> list:
        journal = Journal(path)  # each runner has its own Journal object, as in the CLI's batch
        start.wait()
        return journal.all()

    for attempt in range(20):  # the race is narrow: one attempt alone passed about half the time before the fix
        path, start = tmp_path / f"home{attempt}" / "jobs.sqlite3", threading.Barrier(4)
        with ThreadPoolExecutor(4) as pool:
            assert [f.result() for f in [pool.submit(first_use, path, start) for _ in range(4)]] == [[]] * 4


async def test_an_output_folder_gone_after_paying_names_the_request_and_the_take_is_downloaded_later(
        gmi, fake_time, tmp_path):
    gmi.polls_until_done = 2
    output = tmp_path / "output"

    async def folder_replaced_by_a_file(request):
        if gmi.status_reads() == 2 and output.is_dir():
            shutil.rmtree(output)
            output.write_text("not a folder")  # e.g. a drive unmounted, or a file saved over it
        return None

    gmi.status_hook = folder_replaced_by_a_file
    with pytest.raises(DownloadError) as err:
        await run(gmi, fake_time, tmp_path)
    message = str(err.value)
    assert gmi.created[0] in message and "nothing new is paid" in message and "\n" not in message
    output.unlink()
    result = await run(gmi, fake_time, tmp_path)
    assert result.request_id == gmi.created[0] and len(gmi.post_bodies) == 1
