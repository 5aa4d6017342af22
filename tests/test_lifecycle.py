"""The job lifecycle against the fake GMI: what a user pays, what they get, what they read when it goes wrong."""
from __future__ import annotations

from pathlib import Path

import pytest

from gmi_video_pack.gmi.client import GMIClient, Timing
from gmi_video_pack.gmi.errors import (AuthError, HTTPError, JobFailedError, JobTimeoutError, KeyMissingError,
                                       SubmitUnknownError)
from gmi_video_pack.gmi.jobs import Journal, JobRunner, JobState, PollPolicy, job_key
from gmi_video_pack.gmi.keys import resolve_api_key
from gmi_video_pack.gmi.models import KLING_V3_T2V

FAST = Timing(backoff_base=0.5, backoff_cap=4.0)


def payload(**values):
    base = {"prompt": "a red fox running through snow", "negative_prompt": "", "duration": 5,
            "aspect_ratio": "16:9", "sound": True}
    base.update(values)
    return KLING_V3_T2V.build_payload(base)


def make_runner(gmi, fake_time, tmp_path: Path, *, key: str | None = None, events=None, budget=None) -> JobRunner:
    """A runner as a fresh process would build it: new journal object over the same file each time."""
    def connect():
        return GMIClient(gmi.base_url, key or gmi.key, timing=FAST, sleep=fake_time.sleep, clock=fake_time.clock)

    return JobRunner(Journal(tmp_path / "user" / "jobs.sqlite3"), connect, tmp_path / "output",
                     clock=fake_time.clock, sleep=fake_time.sleep, poll=PollPolicy(first=3, cap=15),
                     wall_clock=fake_time.wall, budget=budget,
                     on_progress=(events.append if events is not None else lambda e: None))


async def run(gmi, fake_time, tmp_path, *, timeout_s=1800.0, take=0, events=None, key=None, budget=None, **values):
    runner = make_runner(gmi, fake_time, tmp_path, key=key, events=events, budget=budget)
    return await runner.run(KLING_V3_T2V, payload(**values), take, timeout_s=timeout_s)


async def test_success_after_several_polls_saves_the_exact_video(gmi, fake_time, tmp_path, clips):
    gmi.polls_until_done = 3
    events = []
    result = await run(gmi, fake_time, tmp_path, events=events)
    assert len(gmi.created) == 1
    assert result.request_id == gmi.created[0]
    assert result.path.read_bytes() == clips[("16:9", True)].read_bytes()
    assert result.path.parent == tmp_path / "output" and result.request_id in result.path.name
    assert not result.reused
    assert gmi.status_reads() == 4
    stages = [e.stage for e in events]
    assert stages[0] == "submitting" and "queued" in stages and "processing" in stages and stages[-1] == "saved"


async def test_payload_is_what_gmi_expects(gmi, fake_time, tmp_path):
    await run(gmi, fake_time, tmp_path, negative_prompt="  blur ", duration=12, aspect_ratio="9:16", sound=False)
    assert gmi.post_bodies == [{"model": "kling-v3-text-to-video",
                                "payload": {"prompt": "a red fox running through snow", "negative_prompt": "blur",
                                            "duration": "12", "aspect_ratio": "9:16", "sound": "off"}}]


async def test_empty_negative_prompt_is_not_sent(gmi, fake_time, tmp_path):
    await run(gmi, fake_time, tmp_path, negative_prompt="   ")
    assert "negative_prompt" not in gmi.post_bodies[0]["payload"]


async def test_key_goes_to_the_api_only_never_to_the_media_host(gmi, fake_time, tmp_path):
    await run(gmi, fake_time, tmp_path)
    assert gmi.api_requests and all(h.get("Authorization") == f"Bearer {gmi.key}" for _, _, h in gmi.api_requests)
    assert gmi.media_requests
    for _, headers in gmi.media_requests:
        assert "Authorization" not in headers
        assert gmi.key not in repr(headers)


async def test_post_that_comes_back_finished_is_not_polled(gmi, fake_time, tmp_path, clips):
    gmi.finish_on_post = True
    result = await run(gmi, fake_time, tmp_path)
    assert gmi.status_reads() == 0
    assert result.path.read_bytes() == clips[("16:9", True)].read_bytes()


async def test_thumbnail_is_never_taken_for_the_video(gmi, fake_time, tmp_path):
    await run(gmi, fake_time, tmp_path)
    assert [path for path, _ in gmi.media_requests] == [f"/media/{gmi.jobs[gmi.created[0]]['media']}.mp4"]


async def test_failed_job_reports_gmi_reason_and_request_id(gmi, fake_time, tmp_path):
    gmi.final_status = "failed"
    with pytest.raises(JobFailedError) as err:
        await run(gmi, fake_time, tmp_path)
    message = str(err.value)
    assert "Content rejected by safety filter" in message and gmi.created[0] in message
    assert "\n" not in message and "submits a new, paid job" in message  # what queueing again would do


async def test_failed_take_submits_again_on_requeue(gmi, fake_time, tmp_path):
    gmi.final_status = "failed"
    with pytest.raises(JobFailedError):
        await run(gmi, fake_time, tmp_path)
    gmi.final_status = "success"
    result = await run(gmi, fake_time, tmp_path)
    assert len(gmi.created) == 2 and result.request_id == gmi.created[1]


async def test_cancelled_remotely_reports_reason(gmi, fake_time, tmp_path):
    gmi.final_status = "cancelled"
    gmi.failure_record = {"message": "cancelled by operator"}
    with pytest.raises(JobFailedError, match=r"cancelled request \w+: cancelled by operator"):
        await run(gmi, fake_time, tmp_path)


async def test_wrong_key_is_reported_with_status_and_without_the_key(gmi, fake_time, tmp_path):
    wrong = "sk-wrong-" + "x" * 30
    with pytest.raises(AuthError) as err:
        await run(gmi, fake_time, tmp_path, key=wrong)
    message = str(err.value)
    assert "HTTP 401" in message and "Invalid API key" in message and "GMI_API_KEY" in message
    assert wrong not in message
    assert gmi.created == []


async def test_wrong_key_refused_then_fixed_submits_the_same_take(gmi, fake_time, tmp_path):
    with pytest.raises(AuthError):
        await run(gmi, fake_time, tmp_path, key="sk-wrong-" + "x" * 30)
    result = await run(gmi, fake_time, tmp_path)
    assert gmi.created == [result.request_id]


async def test_400_shows_gmi_text_and_is_not_retried(gmi, fake_time, tmp_path):
    gmi.faults["post"].append({"status": 400, "body": {"error": "payload.duration: must be one of 3..15"}})
    with pytest.raises(HTTPError) as err:
        await run(gmi, fake_time, tmp_path)
    assert "HTTP 400" in str(err.value) and "payload.duration: must be one of 3..15" in str(err.value)
    assert len(gmi.post_bodies) == 1 and gmi.created == []


async def test_429_backs_off_honouring_retry_after_then_succeeds(gmi, fake_time, tmp_path):
    gmi.faults["post"].append({"status": 429, "body": {"error": "rate limited"}, "headers": {"Retry-After": "7"}})
    result = await run(gmi, fake_time, tmp_path)
    assert len(gmi.post_bodies) == 2 and gmi.created == [result.request_id]
    assert fake_time.slept[0] >= 7


async def test_5xx_on_submit_is_never_resubmitted(gmi, fake_time, tmp_path):
    gmi.faults["post"].append({"status": 500, "body": {"error": "Backend error (400). Please try again."}})
    with pytest.raises(SubmitUnknownError) as err:
        await run(gmi, fake_time, tmp_path)
    assert "Backend error (400)" in str(err.value) and "take" in str(err.value)
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path)
    assert len(gmi.post_bodies) == 1
    journal = Journal(tmp_path / "user" / "jobs.sqlite3")
    assert journal.get(job_key(KLING_V3_T2V.model_id, payload(), 0)).state is JobState.SUBMIT_UNKNOWN


async def test_new_take_after_ambiguous_submit_pays_for_a_new_generation(gmi, fake_time, tmp_path):
    gmi.faults["post_after_create"].append("reset")
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path)
    result = await run(gmi, fake_time, tmp_path, take=1)
    assert len(gmi.created) == 2 and result.request_id == gmi.created[1]


async def test_deadline_ends_a_job_stuck_in_queue_and_requeue_collects_it(gmi, fake_time, tmp_path, clips):
    gmi.never_finish = True
    with pytest.raises(JobTimeoutError) as err:
        await run(gmi, fake_time, tmp_path, timeout_s=600)
    rid = gmi.created[0]
    assert rid in str(err.value)
    assert 600 <= fake_time.now - 1000.0 <= 630
    gmi.never_finish = False
    gmi.jobs[rid]["reads"] = 0
    result = await run(gmi, fake_time, tmp_path)
    assert result.request_id == rid and len(gmi.post_bodies) == 1
    assert result.path.read_bytes() == clips[("16:9", True)].read_bytes()


async def test_poll_interval_grows_with_age_and_is_capped(gmi, fake_time, tmp_path):
    gmi.never_finish = True
    with pytest.raises(JobTimeoutError):
        await run(gmi, fake_time, tmp_path, timeout_s=900)
    waits = fake_time.slept
    assert waits[0] == 3 and max(waits) == 15
    assert all(a <= b for a, b in zip(waits, waits[1:-1]))  # never shrinks (the last one is cut by the deadline)


async def test_requeue_after_restart_reuses_saved_video_without_any_request(gmi, fake_time, tmp_path):
    first = await run(gmi, fake_time, tmp_path)
    requests_before = (len(gmi.api_requests), len(gmi.media_requests))
    again = await run(gmi, fake_time, tmp_path)  # a new Journal object and runner: as after a restart
    assert again.reused and again.path == first.path and again.request_id == first.request_id
    assert (len(gmi.api_requests), len(gmi.media_requests)) == requests_before


async def test_reuse_needs_no_key(gmi, fake_time, tmp_path, monkeypatch):
    await run(gmi, fake_time, tmp_path)
    runner = make_runner(gmi, fake_time, tmp_path)

    def no_key():
        raise AssertionError("a saved take must not need the network")

    runner.connect = no_key
    result = await runner.run(KLING_V3_T2V, payload(), 0, timeout_s=60)
    assert result.reused


async def test_restart_while_polling_reattaches_without_a_new_post(gmi, fake_time, tmp_path):
    gmi.polls_until_done = 5
    runner = make_runner(gmi, fake_time, tmp_path)

    class Crash(Exception):
        pass

    async def crash_on_second_wait(seconds):
        if fake_time.slept:
            raise Crash()
        await fake_time.sleep(seconds)

    runner.sleep = crash_on_second_wait
    with pytest.raises(Crash):
        await runner.run(KLING_V3_T2V, payload(), 0, timeout_s=600)
    assert len(gmi.created) == 1
    result = await run(gmi, fake_time, tmp_path)
    assert result.request_id == gmi.created[0] and len(gmi.post_bodies) == 1


async def test_deleted_video_is_downloaded_again_without_paying(gmi, fake_time, tmp_path):
    first = await run(gmi, fake_time, tmp_path)
    first.path.unlink()
    again = await run(gmi, fake_time, tmp_path)
    assert again.path.is_file() and not again.reused and len(gmi.post_bodies) == 1


async def test_other_take_is_a_new_paid_generation(gmi, fake_time, tmp_path):
    a = await run(gmi, fake_time, tmp_path, take=0)
    b = await run(gmi, fake_time, tmp_path, take=1)
    assert len(gmi.created) == 2 and a.path != b.path


async def test_two_nodes_with_the_same_take_at_once_pay_once(gmi, fake_time, tmp_path):
    import asyncio

    a, b = await asyncio.gather(run(gmi, fake_time, tmp_path), run(gmi, fake_time, tmp_path))
    assert len(gmi.created) == 1 and a.path == b.path


async def test_truncated_download_resumes_and_is_never_handed_on_broken(gmi, fake_time, tmp_path, clips):
    gmi.faults["media"].append("truncate")
    result = await run(gmi, fake_time, tmp_path)
    assert result.path.read_bytes() == clips[("16:9", True)].read_bytes()
    assert len(gmi.media_requests) == 2  # cut off once, fetched again (resumed with Range when bytes had arrived)
    assert not list((tmp_path / "output").glob(".*part"))


def test_missing_key_says_how_to_set_it(tmp_path):
    with pytest.raises(KeyMissingError, match="GMI_API_KEY"):
        resolve_api_key(tmp_path / "no_such_file", environ={})


def test_env_key_wins_over_key_file(tmp_path):
    key_file = tmp_path / "api_key"
    key_file.write_text("from-file-key\n")
    assert resolve_api_key(key_file, environ={"GMI_API_KEY": "from-env-key"}) == "from-env-key"
    assert resolve_api_key(key_file, environ={}) == "from-file-key"


@pytest.mark.parametrize("aspect", ["16:9", "9:16", "1:1"])
async def test_each_aspect_ratio_gives_its_frame_size(gmi, fake_time, tmp_path, aspect):
    import numpy as np

    from conftest import CLIP_SIZES
    from gmi_video_pack.gmi.media import decode_frames, probe

    result = await run(gmi, fake_time, tmp_path, aspect_ratio=aspect)
    info = probe(result.path)
    frames = np.empty((info.frame_count, info.height, info.width, 3), np.float32)
    decode_frames(result.path, info, frames)
    assert frames.shape[1:3] == CLIP_SIZES[aspect][::-1]


async def test_sound_off_gives_silence_of_the_clip_length(gmi, fake_time, tmp_path):
    from gmi_video_pack.gmi.media import decode_audio, probe

    result = await run(gmi, fake_time, tmp_path, sound=False)
    info = probe(result.path)
    wave, rate = decode_audio(result.path, info)
    assert gmi.post_bodies[0]["payload"]["sound"] == "off"
    assert wave.shape[1] == round(info.frame_count / info.fps * rate) and not wave.any()


async def test_journal_of_an_older_version_keeps_its_takes(gmi, fake_time, tmp_path):
    import sqlite3

    path = tmp_path / "user" / "jobs.sqlite3"
    path.parent.mkdir(parents=True)
    first = await run(gmi, fake_time, tmp_path)
    with sqlite3.connect(path) as db:  # as the first version wrote it: without the later columns
        rows = db.execute("SELECT key, model_id, payload, take, state, request_id, media_url, path, error, "
                          "created_at, updated_at FROM jobs").fetchall()
        db.execute("DROP TABLE jobs")
        db.execute("CREATE TABLE jobs (key TEXT PRIMARY KEY, model_id TEXT NOT NULL, payload TEXT NOT NULL, take "
                   "INTEGER NOT NULL, state TEXT NOT NULL, request_id TEXT, media_url TEXT, path TEXT, error TEXT, "
                   "created_at REAL NOT NULL, updated_at REAL NOT NULL)")
        db.executemany("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    again = await run(gmi, fake_time, tmp_path)
    assert again.reused and again.path == first.path and len(gmi.post_bodies) == 1


def test_missing_key_message_names_the_key_file(tmp_path):
    with pytest.raises(KeyMissingError) as err:
        resolve_api_key(tmp_path / "gmi_cloud" / "api_key", environ={})
    assert str(tmp_path / "gmi_cloud" / "api_key") in str(err.value) and "\n" not in str(err.value)
