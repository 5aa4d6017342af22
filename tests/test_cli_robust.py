"""Issue 12: the command line and the rehearsal off the happy path (a subprocess each, the fake GMI counting POSTs)."""
from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import pytest

from gmi_video_pack.gmi.jobs import Job, JobState, Journal, expected_seconds
from gmi_video_pack.gmi.models import KLING_V3_T2V
from gmi_video_pack.gmi.progress import Progress
from gmi_video_pack.gmi.terminal import Printer
from test_cli import ROOT, cli, environment


async def cli_in(cwd: Path, *args: str, env: dict, until=None) -> tuple[int, str, str]:
    """The command run from ``cwd``, as an installed ``gmi-video`` would be."""
    return await cli(*args, env={**env, "PYTHONPATH": str(ROOT)}, until=until, cwd=cwd)


def one_error_line(err: str) -> bool:
    return err.strip().count("\n") == 0 and err.startswith("error: ") and "Traceback" not in err


async def test_an_interrupted_rehearsal_finishes_when_run_again(gmi, tmp_path):
    async def ctrl_c_once_the_id_is_out(proc):
        await proc.stdout.readline()  # "request_id rehearsal-…": the job exists, then the first poll waits
        proc.send_signal(signal.SIGINT)

    args = ("generate", "--prompt", "a fox", "--duration", "3", "--rehearse", "--out", "out")
    env = environment(gmi, tmp_path, key=False)
    code, _, err = await cli_in(tmp_path, *args, env=env, until=ctrl_c_once_the_id_is_out)
    assert code == 130, err
    code, out, err = await cli_in(tmp_path, *args, env=env)
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("saved ") and gmi.api_requests == []


def test_rehearsals_never_feed_the_real_time_estimate(tmp_path):
    journal = Journal(tmp_path / "jobs.sqlite3")
    payload = KLING_V3_T2V.build_payload({"prompt": "x", "duration": 15})
    journal.record(Job(key="r", model_id=KLING_V3_T2V.model_id, payload=payload, take=0, state=JobState.SAVED,
                       request_id="rehearsal-1", submit_started_at=100.0, finished_at=103.0, rehearsal=True))
    seconds, learned = expected_seconds(journal, KLING_V3_T2V, payload)
    assert not learned and seconds == KLING_V3_T2V.default_eta(payload)


async def test_the_journal_serves_a_take_from_any_folder_and_into_any_out(gmi, tmp_path):
    gmi.finish_on_post = True
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    args = ("generate", "--prompt", "a fox", "--duration", "3", "--out", "clips")
    code, out, err = await cli_in(first, *args, env=environment(gmi, tmp_path))
    assert code == 0, err
    code, out, err = await cli_in(second, *args, env=environment(gmi, tmp_path))
    assert code == 0, err
    path = Path(out.strip().splitlines()[-1].split(" ", 1)[1])
    assert out.strip().splitlines()[-1].startswith("reused ") and path.parent == second / "clips"
    assert path.read_bytes() == next((first / "clips").glob("*.mp4")).read_bytes()
    assert len(gmi.post_bodies) == 1 and len(gmi.media_requests) == 1  # no new job, no new download


async def test_batch_files_not_utf8_are_one_line_and_a_bom_is_fine(gmi, tmp_path):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    code, _, err = await cli_in(tmp_path, "batch", str(bad), "--out", "o", env=environment(gmi, tmp_path))
    assert code == 2 and one_error_line(err) and "UTF-8" in err
    gmi.finish_on_post = True
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "a fox", "duration": 3, "name": "fox"}).encode() + b"\n")
    code, out, err = await cli_in(tmp_path, "batch", str(bom), "--out", "o", env=environment(gmi, tmp_path))
    assert code == 0, err
    assert next((tmp_path / "o").glob("*.mp4")).name.startswith("fox_")  # the batch name is in the file name


async def test_flags_are_named_as_typed_and_global_flags_work_after_the_subcommand(gmi, tmp_path):
    code, _, err = await cli_in(tmp_path, "generate", "--prompt", "x", "--duration", "20", "--out", "o",
                                env=environment(gmi, tmp_path))
    assert code == 2 and one_error_line(err) and "--duration" in err
    code, out, err = await cli_in(tmp_path, "jobs", "--journal", str(tmp_path / "elsewhere.sqlite3"), "--new-journal",
                                  env=environment(gmi, tmp_path))
    assert code == 0 and out.startswith("date") and not (tmp_path / "elsewhere.sqlite3").exists()  # listing made none


async def test_a_mistyped_journal_is_refused_before_paying_the_same_take_again(gmi, tmp_path):
    env = environment(gmi, tmp_path)
    journal = tmp_path / "home" / "jobs.sqlite3"
    code, _, err = await cli_in(tmp_path, "generate", "--prompt", "x", "--out", "o", "--journal", str(journal),
                                "--new-journal", env=env)
    assert code == 0, err
    typo_flag = ["--journal", str(journal.with_name("job.sqlite3"))]
    typo_env = {**env, "GMI_JOURNAL": str(journal.with_name("jobs.sqlite"))}
    for flags, environ in ((typo_flag, env), ([], typo_env)):
        code, _, err = await cli_in(tmp_path, "generate", "--prompt", "x", "--out", "o", *flags, env=environ)
        assert code == 2 and one_error_line(err) and "no journal at" in err and "--new-journal" in err, err
    code, _, err = await cli_in(tmp_path, "jobs", "--journal", str(tmp_path / "nowhere.sqlite3"), env=env)
    assert code == 2 and not (tmp_path / "nowhere.sqlite3").exists()
    assert len(gmi.post_bodies) == 1 and not journal.with_name("job.sqlite3").exists()


async def test_a_spend_cap_that_stops_the_only_job_exits_2(gmi, tmp_path):
    env = {**environment(gmi, tmp_path), "GMI_SPEND_CAP_USD": "0.10"}
    code, _, err = await cli_in(tmp_path, "generate", "--prompt", "x", "--out", "o", env=env)
    assert code == 2 and "Spend cap" in err and gmi.post_bodies == []
    assert "each command has a cap of its own" in err and "ComfyUI" not in err


async def test_jobs_lists_date_prompt_and_a_price_only_for_what_was_submitted(gmi, tmp_path):
    gmi.refuse_prompts_with = "forbidden"
    env = environment(gmi, tmp_path)
    await cli_in(tmp_path, "generate", "--prompt", "a forbidden fox", "--out", "o", env=env)
    code, out, _ = await cli_in(tmp_path, "jobs", env=env)
    header, row = out.strip().splitlines()
    assert header.split()[:3] == ["date", "model", "prompt"] and "a forbidden fox" in row
    assert "$" not in row  # refused at submit: nothing was billed


async def test_piped_progress_is_a_few_lines_not_one_per_poll(gmi, tmp_path):
    gmi.polls_until_done = 12
    code, out, err = await cli_in(tmp_path, "generate", "--prompt", "a fox", "--duration", "3", "--out", "o",
                                  env=environment(gmi, tmp_path))
    assert code == 0, err
    assert len(err.strip().splitlines()) <= 8, err


def test_the_bar_never_moves_backwards():
    stream = io.StringIO()
    printer = Printer(stream=stream, in_place=False, ids_on_stdout=False)
    printer(Progress("processing", "processing at GMI, 50s of about 60s", 0.8, "r1"))
    printer(Progress("processing", "processing at GMI, 70s: taking longer than usual", None, "r1"))
    last = stream.getvalue().strip().splitlines()[-1]
    assert printer.percent >= 66 and "longer than usual" in last and "  10%" not in last


async def test_waiting_on_an_unreachable_or_busy_gmi_is_never_silent(gmi, fake_time, tmp_path):
    from gmi_video_pack.gmi.errors import GMIError
    from test_lifecycle import run

    gmi.faults["status"] += ["reset"] * 3 + [{"status": 429, "body": {"error": "slow down"},
                                              "headers": {"Retry-After": "7"}}]
    events = []
    await run(gmi, fake_time, tmp_path, events=events)
    said = [e.text for e in events if e.stage == "waiting"]
    assert len(said) >= 2 and "cannot be reached" in said[0] and "trying again in" in said[0]
    assert said[-1] == "rate-limited by GMI, waiting 7.0 s"
    gmi.faults["status"] += ["reset"] * 50
    try:
        await run(gmi, fake_time, tmp_path, take=1)
    except GMIError as exc:
        assert "run it again" in str(exc) and "Queue again" not in str(exc)


@pytest.mark.parametrize("missing", ["numpy", "aiohttp"])
async def test_a_missing_dependency_is_one_line_with_the_pip_command(gmi, tmp_path, missing):
    shadow = tmp_path / "shadow" / missing
    shadow.mkdir(parents=True)  # this Python "lacks" the package: importing it fails as a missing one does
    (shadow / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{missing}'\", name='{missing}')\n")
    env = {**environment(gmi, tmp_path), "PYTHONPATH": os.pathsep.join([str(tmp_path / 'shadow'), str(ROOT)])}
    for args in (["--help"], ["generate", "--prompt", "x", "--out", "o"]):
        code, out, err = await cli(*args, env=env, cwd=tmp_path)
        assert code == 2 and one_error_line(err) and f"'{missing}' is missing" in err, err
        assert "pip install -r requirements.txt" in err
    assert gmi.post_bodies == []


@pytest.mark.parametrize("args", [["generate", "--prompt", "x", "--duration", "abc", "--out", "o"],
                                  ["generate", "--duraton", "5", "--prompt", "x", "--out", "o"],
                                  ["gnerate", "--prompt", "x"], ["generate", "--prompt", "x"]])
async def test_a_wrong_flag_is_one_line_that_points_to_the_help(gmi, tmp_path, args):
    code, out, err = await cli_in(tmp_path, *args, env=environment(gmi, tmp_path))
    assert code == 2 and one_error_line(err) and "--help" in err and "usage:" not in err, err
    assert gmi.post_bodies == []


async def test_an_empty_journal_file_is_refused_like_a_missing_one(gmi, tmp_path):
    (tmp_path / "zero.sqlite3").touch()  # zeroed by a crash, or a touch typo: it knows no take
    code, _, err = await cli_in(tmp_path, "generate", "--prompt", "x", "--out", "o", "--journal",
                                str(tmp_path / "zero.sqlite3"), env=environment(gmi, tmp_path))
    assert code == 2 and one_error_line(err) and "no journal at" in err and gmi.post_bodies == []


@pytest.mark.parametrize("env_extra, args, says", [
    ({"GMI_SPEND_CAP_USD": "abc"}, ["generate", "--prompt", "x", "--out", "o"], "GMI_SPEND_CAP_USD"),
    ({}, ["generate", "--prompt", "x", "--out", "~nosuchuser4242/x"], "no such user"),
])
async def test_bad_settings_are_one_line_before_anything_is_paid(gmi, tmp_path, env_extra, args, says):
    code, _, err = await cli_in(tmp_path, *args, env={**environment(gmi, tmp_path), **env_extra})
    assert code == 2 and one_error_line(err) and says in err, err
    assert gmi.post_bodies == []


async def test_listing_the_jobs_creates_no_journal(gmi, tmp_path):
    code, out, err = await cli_in(tmp_path, "jobs", env=environment(gmi, tmp_path))
    assert code == 0 and out.startswith("date") and not (tmp_path / "home").exists()


async def test_a_wav_that_cannot_be_written_is_one_line_and_the_paid_video_is_kept(gmi, tmp_path):
    gmi.finish_on_post, gmi.next_ids = True, ["rid-wav-0001"]
    blocked = tmp_path / "o" / "kling-v3-text-to-video_rid-wav-0001.wav.part"
    blocked.mkdir(parents=True)  # the write fails as on a full disk
    env = environment(gmi, tmp_path)
    code, _, err = await cli_in(tmp_path, "generate", "--prompt", "x", "--out", "o", "--wav", env=env)
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("error: Could not write") and ".wav" in last and "video is saved" in last
    assert "Traceback" not in err
    assert not blocked.with_suffix("").exists() and blocked.with_name(blocked.name[:-len(".wav.part")] + ".mp4").is_file()
    blocked.rmdir()  # space freed
    code, _, err = await cli_in(tmp_path, "generate", "--prompt", "x", "--out", "o", "--wav", env=env)
    assert code == 0 and blocked.with_suffix("").is_file() and len(gmi.post_bodies) == 1
