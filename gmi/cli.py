"""Command line over the same engine as the nodes: generate, batch, collect, jobs. Run ``python -m gmi --help``
from the pack's folder (or ``gmi-video`` when installed with pip)."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import connect
from .errors import GMIError, InputError, KeyMissingError
from .jobs import Journal, JobState
from .keys import KEY_FILE_NAME
from .media import decode_audio, ffmpeg_exe, probe, run_child
from .models import KLING_V3_T2V, check_take, check_timeout_minutes
from .progress import Progress, percent_done

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
HOME = Path(os.environ.get("GMI_HOME", Path.home() / ".gmi_cloud"))


@dataclass
class Take:
    """One job of a batch (or the single job of ``generate``)."""

    name: str
    payload: dict
    take: int


def parse_take(values: dict, name: str) -> Take:
    known = {"prompt", "negative_prompt", "duration", "aspect_ratio", "sound", "take", "name"}
    unknown = set(values) - known
    if unknown:
        raise InputError(f"{name}: unknown field(s) {', '.join(sorted(unknown))}; use {', '.join(sorted(known))}.")
    sound = values.get("sound", True)
    payload = KLING_V3_T2V.build_payload({"prompt": values.get("prompt"),
                                          "negative_prompt": values.get("negative_prompt", ""),
                                          "duration": values.get("duration", 5),
                                          "aspect_ratio": values.get("aspect_ratio", "16:9"), "sound": sound})
    return Take(str(values.get("name") or name), payload, check_take(values.get("take", 0)))


class Printer:
    """Progress lines on stderr (one per change), the request id and the path on stdout."""

    def __init__(self, prefix: str = "", ids_on_stdout: bool = True):
        self.prefix = prefix
        self.ids_on_stdout = ids_on_stdout  # a batch keeps stdout for its summary table
        self.last = ""
        self.request_id: str | None = None

    def __call__(self, event: Progress) -> None:
        if event.request_id and event.request_id != self.request_id:
            self.request_id = event.request_id
            print(f"{self.prefix}request_id {event.request_id}", flush=True,
                  file=sys.stdout if self.ids_on_stdout else sys.stderr)
        text = event.text if event.stage != "downloading" or event.fraction in (None, 1.0) else ""
        if text and text != self.last:
            self.last = text
            print(f"{self.prefix}{bar(event)}{text}", file=sys.stderr, flush=True)


def bar(event: Progress, width: int = 20) -> str:
    """A text progress bar for the whole job (the same stages as the node's bar)."""
    percent = percent_done(event, decoding_follows=False)
    filled = round(width * percent / 100)
    return f"[{'#' * filled}{'.' * (width - filled)}] {percent:3.0f}%  "


def open_runner(args, printer: Printer, rehearsal_label: str | None = None):
    """``async with``: a runner over the chosen journal and output folder (see gmi.connect)."""
    return connect.open_runner(args.journal, args.out, HOME / KEY_FILE_NAME, on_progress=printer,
                               rehearsal_label=rehearsal_label)


async def run_take(args, take: Take, printer: Printer):
    timeout_s = check_timeout_minutes(args.timeout_minutes) * 60
    async with open_runner(args, printer, f"take {take.take}" if args.rehearse else None) as runner:
        return await runner.run(KLING_V3_T2V, take.payload, take.take, timeout_s=timeout_s, rehearse=args.rehearse)


def write_extras(args, video: Path) -> list[Path]:
    """The WAV and PNG frames asked for, next to the MP4."""
    made = []
    if getattr(args, "wav", False):
        wave_data, rate = decode_audio(video, probe(video))
        target = video.with_suffix(".wav")
        pcm = (np.clip(wave_data.T, -1, 1) * 32767).astype("<i2")
        with wave.open(str(target), "wb") as out:
            out.setnchannels(pcm.shape[1])
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(pcm.tobytes())
        made.append(target)
    if getattr(args, "png", False):
        folder = video.with_name(video.stem + "_frames")
        folder.mkdir(exist_ok=True)
        run_child([ffmpeg_exe(), "-v", "error", "-y", "-i", str(video), "-fps_mode", "passthrough",
                   str(folder / "%05d.png")], check=True)
        made.append(folder)
    return made


async def cmd_generate(args) -> int:
    take = parse_take({"prompt": args.prompt, "negative_prompt": args.negative, "duration": args.duration,
                       "aspect_ratio": args.aspect, "sound": args.sound == "on", "take": args.take}, "generate")
    result = await run_take(args, take, Printer())
    for extra in await asyncio.to_thread(write_extras, args, result.path):
        print(f"wrote {extra}", file=sys.stderr)
    print(("reused " if result.reused else "saved ") + str(result.path), flush=True)
    return EXIT_OK


def read_batch(path: Path) -> list[Take]:
    takes, names = [], set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror}).") from None
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            values = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{path.name} line {number}: not JSON ({exc.msg}).") from None
        if not isinstance(values, dict):
            raise InputError(f"{path.name} line {number}: expected an object like {{\"prompt\": \"...\"}}.")
        try:
            take = parse_take(values, f"line{number}")
        except InputError as exc:
            raise InputError(f"{path.name} line {number}: {exc}") from None
        if take.name in names:
            raise InputError(f"{path.name} line {number}: the name {take.name!r} is used twice.")
        names.add(take.name)
        takes.append(take)
    if not takes:
        raise InputError(f"{path.name}: no jobs in it (one JSON object per line).")
    return takes


async def cmd_batch(args) -> int:
    takes = read_batch(args.file)
    if args.concurrency < 1:
        raise InputError("--concurrency: use 1 or more.")
    gate = asyncio.Semaphore(args.concurrency)
    rows: dict[str, tuple[str, str, str]] = {}

    async def one(take: Take) -> None:
        printer = Printer(prefix=f"[{take.name}] ", ids_on_stdout=False)
        async with gate:
            try:
                result = await run_take(args, take, printer)
                await asyncio.to_thread(write_extras, args, result.path)
                rows[take.name] = ("reused" if result.reused else "done", result.request_id, str(result.path))
            except Exception as exc:  # noqa: BLE001  one take's fault (even an OSError) must not sink the batch
                text = one_line(exc)
                print(f"[{take.name}] failed: {text}", file=sys.stderr, flush=True)
                rows[take.name] = ("failed", printer.request_id or "-", text)

    await asyncio.gather(*(one(t) for t in takes))
    width = max(len(t.name) for t in takes)
    print(f"{'name':{width}}  status  request_id{' ' * 24}result")
    for take in takes:
        status, rid, result = rows[take.name]
        print(f"{take.name:{width}}  {status:6}  {rid:34}  {result}")
    failed = [t.name for t in takes if rows[t.name][0] == "failed"]
    if failed:
        print(f"{len(failed)} of {len(takes)} failed: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


async def cmd_collect(args) -> int:
    async with open_runner(args, Printer()) as runner:
        result = await runner.collect(args.request_id, timeout_s=check_timeout_minutes(args.timeout_minutes) * 60)
    print(("reused " if result.reused else "saved ") + str(result.path), flush=True)
    return EXIT_OK


async def cmd_jobs(args) -> int:
    jobs = await asyncio.to_thread(Journal(args.journal).all)
    print(f"{'request_id':34}  {'status':14}  take  {'price':>7}  file")
    for job in jobs:
        price = f"${job.price:.2f}" if job.price is not None else ("free" if job.rehearsal else "-")
        state = job.state.value + (" (rehearsal)" if job.rehearsal else "")
        path = job.path if job.state is JobState.SAVED else (job.error or "")
        print(f"{(job.request_id or '-'):34}  {state:14}  {job.take:4}  {price:>7}  {path}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    prog = "python -m gmi" if Path(sys.argv[0]).name in ("__main__.py", "-m") else Path(sys.argv[0]).name
    parser = argparse.ArgumentParser(prog=prog, description="GMI Cloud video from the command line: the "
                                     "same engine and journal semantics as the ComfyUI nodes (never pays twice).")
    parser.add_argument("--journal", type=Path, default=Path(os.environ.get("GMI_JOURNAL", HOME / "jobs.sqlite3")),
                        help="the job journal (default: $GMI_JOURNAL or ~/.gmi_cloud/jobs.sqlite3)")
    sub = parser.add_subparsers(dest="command", required=True)

    def job_options(p, out_required=True):
        p.add_argument("--out", type=Path, required=out_required, help="folder for the MP4s")
        p.add_argument("--timeout-minutes", type=int, default=30, help="stop waiting after this long (default 30)")
        p.add_argument("--rehearse", action="store_true", help="free local stand-in for GMI: no key, no charge")
        p.add_argument("--wav", action="store_true", help="also write the soundtrack as WAV")
        p.add_argument("--png", action="store_true", help="also write every frame as PNG")

    gen = sub.add_parser("generate", help="one video; prints the request id first and the saved path last")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative", default="")
    gen.add_argument("--duration", type=int, default=5, help="3-15 seconds (default 5)")
    gen.add_argument("--aspect", default="16:9", help="16:9, 9:16 or 1:1")
    gen.add_argument("--sound", choices=["on", "off"], default="on")
    gen.add_argument("--take", type=int, default=0, help="same take = same paid video, reused (default 0)")
    job_options(gen)
    batch = sub.add_parser("batch", help="one job per JSON line; re-running collects what exists")
    batch.add_argument("file", type=Path, help="JSONL: prompt, duration, aspect_ratio, sound, take, name")
    batch.add_argument("--concurrency", type=int, default=4)
    job_options(batch)
    collect = sub.add_parser("collect", help="fetch an existing request's video; submits nothing")
    collect.add_argument("request_id")
    collect.add_argument("--out", type=Path, required=True)
    collect.add_argument("--timeout-minutes", type=int, default=30)
    sub.add_parser("jobs", help="list the journal: id, status, take, price, file")
    return parser


COMMANDS = {"generate": cmd_generate, "batch": cmd_batch, "collect": cmd_collect, "jobs": cmd_jobs}


def one_line(exc: BaseException) -> str:
    """An error as the one line a user reads: the pack's own message, or what the OS said and about which file."""
    if isinstance(exc, GMIError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or type(exc).__name__}{where}"
    if isinstance(exc, subprocess.CalledProcessError):
        return f"ffmpeg failed (exit {exc.returncode}) writing the extras"
    return f"{type(exc).__name__}: {exc}"


def _stop_on_term(signum, frame) -> None:
    # A kill (SIGTERM, a closed terminal) ends like Ctrl-C: cleanups run, ffmpeg children are stopped.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _stop_on_term)
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except (InputError, KeyMissingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (GMIError, OSError, subprocess.CalledProcessError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted: started jobs are kept in the journal; run the same command again to collect them",
              file=sys.stderr)
        return EXIT_INTERRUPTED
