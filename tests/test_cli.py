"""The command line end to end (``python -m gmi`` in a subprocess) against the fake GMI."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


async def cli(*args: str, env: dict, until=None, cwd: Path = ROOT) -> tuple[int, str, str]:
    """Runs the CLI (from ``cwd``); ``until`` (async, given the process) may end it early (crash, Ctrl-C)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gmi", *args, cwd=cwd, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    if until is not None:
        await until(proc)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


def environment(gmi, tmp_path, key=True) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GMI_")}
    env.update(GMI_BASE_URL=gmi.base_url, GMI_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    if key:
        env["GMI_API_KEY"] = gmi.key
    return env


async def test_generate_prints_request_id_first_and_path_last(gmi, tmp_path, clips):
    gmi.finish_on_post = True
    code, out, err = await cli("generate", "--prompt", "a fox", "--duration", "5", "--aspect", "9:16", "--sound", "off",
                               "--out", str(tmp_path / "out"), "--wav", "--png", env=environment(gmi, tmp_path))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == f"request_id {gmi.created[0]}"
    path = Path(lines[-1].split(" ", 1)[1])
    assert lines[-1].startswith("saved ") and path.read_bytes() == clips[("9:16", False)].read_bytes()
    assert path.with_suffix(".wav").stat().st_size > 44
    assert len(list(path.with_name(path.stem + "_frames").glob("*.png"))) == 48
    assert gmi.post_bodies[0]["payload"] == {"prompt": "a fox", "duration": "5", "aspect_ratio": "9:16", "sound": "off"}
    assert gmi.key not in out + err


async def test_bad_input_exits_2_with_one_line_before_paying(gmi, tmp_path):
    code, out, err = await cli("generate", "--prompt", "a fox", "--duration", "20", "--out", str(tmp_path),
                               env=environment(gmi, tmp_path))
    assert code == 2 and err.strip().count("\n") == 0 and "duration" in err and "3-15" in err
    assert gmi.post_bodies == []


async def test_rehearsal_needs_no_key_and_is_never_reused_for_the_real_take(gmi, tmp_path):
    code, out, err = await cli("generate", "--prompt", "a fox", "--duration", "3", "--rehearse", "--out",
                               str(tmp_path / "out"), env=environment(gmi, tmp_path, key=False))
    assert code == 0, err
    assert "rehearsal" in out and gmi.post_bodies == []
    code, out, err = await cli("jobs", env=environment(gmi, tmp_path))
    assert "(rehearsal)" in out and "free" in out
    gmi.finish_on_post = True
    code, out, err = await cli("generate", "--prompt", "a fox", "--duration", "3", "--out", str(tmp_path / "out"),
                               env=environment(gmi, tmp_path))
    assert code == 0 and len(gmi.post_bodies) == 1


async def test_two_processes_running_the_same_take_pay_once(gmi, tmp_path):
    """Two runs of one take in two programs sharing a journal (two terminals, or the CLI on ComfyUI's journal)."""
    released = asyncio.Event()

    async def hold_the_submit(request):
        await released.wait()  # the first program's POST is in flight until the second has had its chance

    gmi.faults["post"].append(hold_the_submit)
    gmi.finish_on_post = True
    args = ["-m", "gmi", "generate", "--prompt", "a fox", "--duration", "3", "--out", str(tmp_path / "out")]
    env = environment(gmi, tmp_path)
    pipes = {"cwd": ROOT, "env": env, "stdout": asyncio.subprocess.PIPE, "stderr": asyncio.subprocess.PIPE}
    first = await asyncio.create_subprocess_exec(sys.executable, *args, **pipes)
    while not gmi.post_bodies:
        await asyncio.sleep(0.02)
    second = await asyncio.create_subprocess_exec(sys.executable, *args, **pipes)
    said = b""
    while b"waiting" not in said and (line := await second.stderr.readline()):
        said += line
    released.set()
    (out1, err1), (out2, err2) = await asyncio.gather(first.communicate(), second.communicate())
    assert b"another program" in said and first.returncode == 0 and second.returncode == 0, (err1 + said + err2).decode()
    assert len(gmi.post_bodies) == 1
    saved, reused = out1.decode().strip().splitlines()[-1], out2.decode().strip().splitlines()[-1]
    assert saved.startswith("saved ") and reused == "reused " + saved.split(" ", 1)[1]


def write_batch(path: Path, prompts: list[str]) -> Path:
    path.write_text("\n".join(json.dumps({"prompt": p, "duration": 3, "aspect_ratio": "1:1", "sound": False,
                                          "name": f"job{i}"}) for i, p in enumerate(prompts)) + "\n")
    return path


async def test_batch_with_one_failure_lists_it_and_exits_1(gmi, tmp_path):
    gmi.finish_on_post = True
    gmi.refuse_prompts_with = "forbidden"
    batch = write_batch(tmp_path / "b.jsonl", ["a fox", "a forbidden thing", "a cat"])
    code, out, err = await cli("batch", str(batch), "--concurrency", "2", "--out", str(tmp_path / "out"),
                               env=environment(gmi, tmp_path))
    assert code == 1
    table = {line.split()[0]: line.split()[1] for line in out.strip().splitlines()[1:]}
    assert table == {"job0": "done", "job1": "failed", "job2": "done"}
    assert "1 of 3 failed: job1" in err and "content refused by moderation" in err


async def test_batch_rerun_after_a_crash_submits_only_what_is_missing(gmi, tmp_path):
    gmi.never_finish = True
    batch = write_batch(tmp_path / "b.jsonl", ["one", "two", "three"])

    journal = tmp_path / "home" / "jobs.sqlite3"

    def recorded_as_submitted() -> int:
        try:
            with sqlite3.connect(journal) as db:
                return db.execute("SELECT count(*) FROM jobs WHERE state = 'submitted'").fetchone()[0]
        except sqlite3.Error:
            return 0

    async def crash_once_two_are_submitted(proc):
        while recorded_as_submitted() < 2:  # both request ids are in the journal (and being polled)
            await asyncio.sleep(0.02)
        proc.kill()  # no cleanup at all, as in a power cut

    args = ("batch", str(batch), "--concurrency", "2", "--out", str(tmp_path / "out"))
    code, _, _ = await cli(*args, env=environment(gmi, tmp_path), until=crash_once_two_are_submitted)
    assert code == -signal.SIGKILL and len(gmi.post_bodies) == 2
    gmi.never_finish, gmi.polls_until_done = False, 0
    code, out, err = await cli(*args, env=environment(gmi, tmp_path))
    assert code == 0, err
    assert len(gmi.post_bodies) == 3  # only the job that had not been submitted
    assert [line.split()[1] for line in out.strip().splitlines()[1:]] == ["done", "done", "done"]


async def test_ctrl_c_exits_130_and_keeps_the_job(gmi, tmp_path):
    gmi.never_finish = True

    async def interrupt_while_polling(proc):
        while gmi.status_reads() < 1:
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGINT)

    args = ("generate", "--prompt", "a fox", "--out", str(tmp_path / "out"))
    code, out, err = await cli(*args, env=environment(gmi, tmp_path), until=interrupt_while_polling)
    assert code == 130 and "kept in the journal" in err
    gmi.never_finish, gmi.polls_until_done = False, 0
    code, out, err = await cli(*args, env=environment(gmi, tmp_path))
    assert code == 0 and len(gmi.post_bodies) == 1


async def test_collect_and_jobs(gmi, tmp_path, clips):
    rid = gmi.add_console_job({"prompt": "console", "aspect_ratio": "16:9", "sound": "on"})
    code, out, err = await cli("collect", rid, "--out", str(tmp_path / "out"), env=environment(gmi, tmp_path))
    assert code == 0, err
    assert Path(out.strip().splitlines()[-1].split(" ", 1)[1]).read_bytes() == clips[("16:9", True)].read_bytes()
    code, out, err = await cli("collect", "0123456789abcdef", "--out", str(tmp_path), env=environment(gmi, tmp_path))
    assert code == 2 and "no request '0123456789abcdef'" in err
    code, out, err = await cli("jobs", env=environment(gmi, tmp_path))
    assert code == 0 and rid in out and "saved" in out and gmi.post_bodies == []


async def test_one_spend_cap_covers_the_whole_batch(gmi, tmp_path):
    gmi.finish_on_post = True
    batch = write_batch(tmp_path / "b.jsonl", ["one", "two", "three"])  # 3 s without sound: about $0.50 each
    env = {**environment(gmi, tmp_path), "GMI_SPEND_CAP_USD": "1.10"}
    code, out, err = await cli("batch", str(batch), "--concurrency", "1", "--out", str(tmp_path / "out"), env=env)
    assert code == 1 and len(gmi.post_bodies) == 2
    assert [line.split()[1] for line in out.strip().splitlines()[1:]] == ["done", "done", "failed"]
    assert "Spend cap reached" in err
