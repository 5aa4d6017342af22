"""When the pack reads a job's status: often around the time such jobs usually take, sparsely far from it, so a job
that ends as usual is seen done within two seconds without more reads than the age-only schedule."""
from __future__ import annotations

import pytest

from gmi_video_pack.gmi.client import GMIClient
from gmi_video_pack.gmi.jobs import Job, JobState, Journal, job_key
from gmi_video_pack.gmi.models import KLING_V3_T2V
from gmi_video_pack.gmi.progress import PollPolicy

from test_lifecycle import make_runner, payload

POLICY = PollPolicy()
# The runner passes the learned estimate to the policy once jobs.py has issue 13's lines (see the report).
WIRED = hasattr(GMIClient, "_held")


def seen(ends_at: float, eta: float | None, policy: PollPolicy = POLICY) -> tuple[int, float]:
    """(status reads, seconds between the job's end and the read that sees it) for a job that ends at ``ends_at``."""
    age, reads = 0.0, 0
    while True:
        age += policy.interval(age, eta) if eta is not None else policy.interval(age)
        reads += 1
        if age >= ends_at:
            return reads, age - ends_at


def around(eta: float, low: float, high: float, steps: int = 40) -> list[float]:
    return [eta * (low + (high - low) * i / steps) for i in range(steps + 1)]


@pytest.mark.parametrize("eta", [20, 45, 120, 240, 330, 600, 900])
def test_a_job_ending_within_5_percent_of_its_estimate_is_seen_within_1_5_s(eta):
    assert max(seen(end, eta)[1] for end in around(eta, 0.95, 1.05)) <= 1.5 + 1e-9


@pytest.mark.parametrize("eta", [45, 120, 240, 330, 600, 900])
def test_jobs_near_their_estimate_cost_fewer_reads_than_the_age_only_schedule(eta):
    ends = around(eta, 0.95, 1.05)
    assert seen(eta, eta)[0] < seen(eta, None)[0]
    assert sum(seen(end, eta)[0] for end in ends) < sum(seen(end, None)[0] for end in ends)


@pytest.mark.parametrize("eta", [20, 120, 330, 900])
def test_a_job_that_overruns_its_estimate_is_seen_within_one_cap(eta):
    assert max(seen(end, eta)[1] for end in around(eta, 1.05, 4.0, 400)) <= POLICY.cap


@pytest.mark.parametrize("eta", [20, 120, 330, 900])
def test_a_job_that_ends_long_before_its_estimate_is_seen_within_two_caps(eta):
    assert max(seen(end, eta)[1] for end in around(eta, 0.05, 0.95, 400)) <= 2 * POLICY.cap


def test_far_from_the_estimate_reads_are_sparser_than_the_age_only_schedule():
    assert POLICY.interval(100, eta=330) > POLICY.interval(100)
    assert POLICY.interval(330, eta=330) < POLICY.interval(330)


def test_without_an_estimate_the_schedule_grows_with_age_as_before():
    assert [POLICY.interval(age) for age in (0, 10, 30, 60, 100, 150, 1000)] == [3, 3, 3, 6, 10, 15, 15]


def test_a_policy_shrunk_for_tests_stays_fast_with_an_estimate():
    quick = PollPolicy(first=0.05, cap=0.05)
    assert max(quick.interval(age / 10, eta=300) for age in range(4000)) <= 0.1


def learned(tmp_path, seconds: float, count: int = 5) -> None:
    """Jobs like payload() finished on this machine before, each in ``seconds``: the estimate is then learned."""
    journal = Journal(tmp_path / "user" / "jobs.sqlite3")
    for n in range(count):
        journal.record(Job(key=f"past-{n}", model_id=KLING_V3_T2V.model_id, payload=payload(), take=100 + n,
                           state=JobState.SAVED, request_id=f"past-{n}", submit_started_at=1_000.0 + n * 1_000,
                           finished_at=1_000.0 + n * 1_000 + seconds))


@pytest.mark.skipif(not WIRED, reason="needs issue 13's lines in jobs.py and client.py")
async def test_a_job_ending_at_its_usual_time_is_seen_within_two_seconds(gmi, fake_time, tmp_path):
    learned(tmp_path, 180.0)
    gmi.job_seconds = 180.0
    runner = make_runner(gmi, fake_time, tmp_path)
    await runner.run(KLING_V3_T2V, payload(), 0, timeout_s=3600)
    job = Journal(tmp_path / "user" / "jobs.sqlite3").get(job_key(KLING_V3_T2V.model_id, payload(), 0))
    assert job.finished_at - job.submit_started_at - 180.0 <= 2.0
    assert gmi.status_reads() <= seen(180.0, None, PollPolicy(first=3, cap=15))[0]


@pytest.mark.skipif(not WIRED, reason="needs issue 13's lines in jobs.py and client.py")
async def test_a_rehearsal_is_polled_as_before_whatever_real_jobs_took(gmi, fake_time, tmp_path):
    learned(tmp_path, 180.0)
    gmi.job_seconds = 4.0
    runner = make_runner(gmi, fake_time, tmp_path)
    await runner.run(KLING_V3_T2V, payload(), 0, timeout_s=3600, rehearse=True)
    assert gmi.status_reads() == seen(4.0, None, PollPolicy(first=3, cap=15))[0]
