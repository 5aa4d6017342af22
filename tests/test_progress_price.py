"""What the user reads while waiting (ETA learned from this machine's jobs) and what a take costs before paying."""
from __future__ import annotations

import logging

import pytest

from gmi_video_pack.gmi.errors import HTTPError, SpendCapError
from gmi_video_pack.gmi.jobs import Job, JobState, Journal, SpendCap, describe_wait, expected_seconds
from gmi_video_pack.gmi.models import KLING_V3_T2V, parse_gmi_price
from test_lifecycle import payload, run


def texts(events, stage=None):
    return [e.text for e in events if stage is None or e.stage == stage]


async def test_first_job_uses_the_default_eta(gmi, fake_time, tmp_path):
    events = []
    gmi.polls_until_done = 4
    await run(gmi, fake_time, tmp_path, events=events)
    assert any("of about 2m 00s" in t for t in texts(events, "processing"))  # 60 s + 12 s per second of video


async def test_eta_is_learned_from_finished_jobs_of_the_same_duration_and_sound(gmi, fake_time, tmp_path):
    journal = Journal(tmp_path / "user" / "jobs.sqlite3")
    for take, seconds, duration in [(0, 21.0, 5), (1, 27.0, 5), (2, 33.0, 5), (9, 99.0, 10)]:  # 10 s: a group of its own
        journal.record(Job(key=f"past-{take}", model_id=KLING_V3_T2V.model_id, payload=payload(duration=duration),
                           take=take, state=JobState.SAVED, submit_started_at=1000.0 * take,
                           finished_at=1000.0 * take + seconds))
    events = []
    gmi.polls_until_done = 20
    await run(gmi, fake_time, tmp_path, take=99, events=events)
    waiting = texts(events, "processing")
    assert any("of about 27s" in t for t in waiting), waiting
    assert any("taking longer than usual (usually about 27s)" in t for t in waiting)
    fractions = [e.fraction for e in events if e.stage == "processing" and e.fraction is not None]
    assert fractions == sorted(fractions) and max(fractions) <= 0.95


def test_eta_follows_the_newest_jobs_when_gmi_has_slowed_down(tmp_path):
    journal = Journal(tmp_path / "jobs.sqlite3")
    for n in range(110):  # 60 older jobs of 10 s, then 50 newer ones of 100 s
        seconds = 10.0 if n < 60 else 100.0
        journal.record(Job(key=f"k{n}", model_id=KLING_V3_T2V.model_id, payload=payload(), take=n,
                           state=JobState.SAVED, submit_started_at=1000.0 * n, finished_at=1000.0 * n + seconds))
    assert expected_seconds(journal, KLING_V3_T2V, payload()) == (100.0, True)


def test_wait_text_past_the_eta_says_so_and_the_bar_keeps_its_place():
    _, before = describe_wait("processing", 110, 120)
    text, after = describe_wait("processing", 200, 120)
    assert "taking longer than usual" in text and after >= before  # never back from 66 % to 10 %
    assert describe_wait("queued", 30, 120) == ("queued at GMI, 30s", None)


async def test_a_rehearsal_never_says_gmi_while_it_runs(tmp_path):
    from gmi_video_pack.gmi.client import GMIClient
    from gmi_video_pack.gmi.jobs import JobRunner, PollPolicy
    from gmi_video_pack.gmi.rehearsal import REHEARSAL_KEY, RehearsalQueue

    events = []
    async with RehearsalQueue("take 0") as queue:
        runner = JobRunner(Journal(tmp_path / "jobs.sqlite3"), lambda: GMIClient(queue.base_url, REHEARSAL_KEY),
                           tmp_path / "out", poll=PollPolicy(first=0.05, cap=0.05), on_progress=events.append)
        await runner.run(KLING_V3_T2V, payload(duration=3, sound=False), 0, timeout_s=120, rehearse=True)
    said = [e.text for e in events if e.stage in ("submitting", "queued", "processing")]
    assert said and not [t for t in said if "GMI" in t] and any("rehearsal stand-in" in t for t in said)


def test_price_from_the_table_with_and_without_sound():
    assert KLING_V3_T2V.estimate_price(payload(duration=5, sound=True)).amount == pytest.approx(1.26)
    off = KLING_V3_T2V.estimate_price(payload(duration=10, sound=False))
    assert off.amount == pytest.approx(1.68) and "estimate" in str(off) and "$1.68" in str(off)


@pytest.mark.parametrize("record,rate", [({"price_info": {"price": 0.2, "pricing_type": "per_second", "unit": "second"}}, 0.2),
                                         ({"pricing": {"price": "$0.3", "unit": "per sec"}}, 0.3),
                                         ({"price_info": {"price": 5, "unit": "request"}}, None),
                                         ({"model_ids": []}, None), (None, None)])
def test_gmi_price_is_used_only_when_stated_per_second(record, rate):
    assert parse_gmi_price(record) == rate


async def test_submit_log_line_says_the_price(gmi, fake_time, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gmi")
    events = []
    gmi.model_record = {"model_id": "kling-v3-text-to-video", "price_info": {"price": 0.2, "unit": "second"}}
    await run(gmi, fake_time, tmp_path, events=events)
    assert "estimated $1.00 (5 s x $0.200/s, GMI's price)" in caplog.text
    assert any("$1.00" in t for t in texts(events, "submitting"))


async def test_spend_cap_refuses_a_submit_past_it_and_reuse_costs_nothing(gmi, fake_time, tmp_path):
    cap = SpendCap(2.0)
    await run(gmi, fake_time, tmp_path, budget=cap)
    with pytest.raises(SpendCapError) as err:
        await run(gmi, fake_time, tmp_path, budget=cap, take=1)
    assert "$1.26" in str(err.value) and "GMI_SPEND_CAP_USD" in str(err.value) and "\n" not in str(err.value)
    assert len(gmi.post_bodies) == 1
    again = await run(gmi, fake_time, tmp_path, budget=cap)
    assert again.reused and cap.spent == pytest.approx(1.26)


async def test_refused_submit_does_not_count_against_the_cap(gmi, fake_time, tmp_path):
    cap = SpendCap(1.5)
    gmi.faults["post"].append({"status": 400, "body": {"error": "prompt rejected"}})
    with pytest.raises(HTTPError):
        await run(gmi, fake_time, tmp_path, budget=cap)
    assert cap.spent == 0
    await run(gmi, fake_time, tmp_path, budget=cap)
    assert cap.spent == pytest.approx(1.26)


def test_a_stopped_run_says_where_the_job_is_and_that_requeue_is_free():
    from gmi_video_pack.gmi.progress import interrupted_text

    kept = interrupted_text("req-123456")
    assert kept.startswith("interrupted") and "req-123456" in kept and "nothing new is paid" in kept
    assert "nothing was paid" in interrupted_text(None)
    assert "rehearsal" in interrupted_text("rehearsal-1", rehearsal=True)


async def test_the_request_id_is_reported_as_soon_as_gmi_gives_it(gmi, fake_time, tmp_path):
    from gmi_video_pack.gmi.errors import JobTimeoutError

    gmi.never_finish = True
    events = []
    with pytest.raises(JobTimeoutError):
        await run(gmi, fake_time, tmp_path, events=events, timeout_s=1)
    first_with_id = next(e for e in events if e.request_id)
    assert first_with_id.request_id == gmi.created[0] and first_with_id.stage == "queued"
