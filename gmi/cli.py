"""Command line over the same engine as the nodes: generate, batch, collect, jobs. Run ``python -m gmi --help``
from the pack's folder (or ``gmi-video`` when installed with pip).

Environment: GMI_API_KEY (the key), GMI_HOME (folder of the key file and the default journal, ~/.gmi_cloud),
GMI_JOURNAL (the journal), GMI_BASE_URL, GMI_SPEND_CAP_USD, GMI_MAX_JOBS."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import connect, posting
from .net import Timing
from .errors import (GMIError, InputError, JournalError, KeyMissingError, MediaError, SpendCapError,
                     UnrecordedJobError)
from .jobs import Journal, JobState
from .keys import KEY_FILE_NAME
from .media import decode_audio, ffmpeg_exe, probe, read_image, run_child
from .images import StillImage, still_image
from .models import CATALOGUE, KLING_V3_T2V, ModelSpec, check_take, check_timeout_minutes
from .terminal import Printer, one_line

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
HOME = Path(os.environ.get("GMI_HOME") or Path.home() / ".gmi_cloud").expanduser()  # absolute: checked in main
ASPECTS = KLING_V3_T2V.param("aspect_ratio").options
FLAGS = {"image": "--image", "end_image": "--end-image", "model": "--model", "storyboard": "--storyboard",
         "mode": "--mode", "prompt": "--prompt", "negative_prompt": "--negative", "duration": "--duration",
         "aspect_ratio": "--aspect", "sound": "--sound", "take": "--take", "timeout_minutes": "--timeout-minutes", "request_id": "REQUEST_ID"}


@dataclass
class Take:
    """One job of a batch (or the single job of ``generate``)."""

    name: str
    payload: dict
    take: int
    spec: ModelSpec = KLING_V3_T2V
    images: tuple[StillImage, ...] = ()


def parse_take(values: dict, name: str, folder: Path = Path(".")) -> Take:
    """A job from its fields (a batch line, or generate's flags): the model's own inputs from the catalogue, image
    files (relative to ``folder``) read and checked before anything is paid."""
    spec = CATALOGUE.get(values.get("model") or KLING_V3_T2V.model_id)
    if spec is None:
        raise InputError(f"model: {values.get('model')!r} is not one the pack knows; use one of "
                         f"{', '.join(CATALOGUE)}.")
    inputs = {p.label for p in spec.params}
    known = inputs | {"take", "name", "model"}
    unknown = {k for k, v in values.items() if v is not None} - known
    if unknown:
        raise InputError(f"{name}: {', '.join(sorted(unknown))} is not an input of {spec.model_id}; use "
                         f"{', '.join(sorted(known))}.")
    fields = {k: v for k, v in values.items() if k in inputs}
    if isinstance(fields.get("storyboard"), Path):  # generate --storyboard FILE: JSON shots, or 'seconds | prompt'
        fields["storyboard"] = read_storyboard(fields["storyboard"])
    images = []
    for param in spec.params:
        if param.kind == "image" and fields.get(param.label) is not None:
            file = folder / str(fields[param.label])
            try:
                image = still_image(read_image(file), param.label)
            except MediaError as exc:
                raise InputError(f"{param.label}: {file} cannot be read as a picture ({exc}).") from None
            fields[param.label] = image
            images.append(image)
    return Take(str(values.get("name") or name), spec.build_payload(fields), check_take(values.get("take", 0)), spec,
                tuple(images))


def open_runner(args, printer: Printer, rehearsal_label: str | None = None):
    """``async with``: a runner over the chosen journal and output folder (see gmi.connect)."""
    return connect.open_runner(args.journal, args.out.absolute(), HOME / KEY_FILE_NAME, on_progress=printer,
                               rehearsal_label=rehearsal_label)


async def run_take(args, take: Take, printer: Printer, name: str | None = None):
    timeout_s = check_timeout_minutes(args.timeout_minutes) * 60
    try:
        async with open_runner(args, printer, f"take {take.take}" if args.rehearse else None) as runner:
            return await runner.run(take.spec, take.payload, take.take, timeout_s=timeout_s,
                                    rehearse=args.rehearse, name=name, images=take.images)
    finally:
        printer.close()


def read_storyboard(path: Path):
    """A storyboard file: a JSON list of {"prompt", "duration"}, or one 'seconds | prompt' line per shot."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--storyboard: {path} cannot be read ({getattr(exc, 'strerror', None) or exc}).") from None
    try:
        return json.loads(text)
    except ValueError:
        return text


def with_flag_names(exc: InputError) -> InputError:
    """An input error as the command line says it: the flag the user typed, not the node's input name."""
    text = str(exc)
    field = text.split(":", 1)[0]
    return InputError(FLAGS[field] + text[len(field):]) if field in FLAGS else exc


def write_extras(args, video: Path) -> list[Path]:
    """The WAV and PNG frames asked for, next to the MP4, each under a temporary name until it is whole; a failure
    (a full disk) is one line that names the file and says the paid video is safe."""
    made = []
    try:
        if getattr(args, "wav", False):
            wave_data, rate = decode_audio(video, probe(video))
            target = video.with_suffix(".wav")
            part = target.with_name(target.name + ".part")
            pcm = (np.clip(wave_data.T, -1, 1) * 32767).astype("<i2")
            with open(part, "wb") as raw, wave.open(raw, "wb") as out:  # a failed open leaves no half writer
                out.setnchannels(pcm.shape[1])
                out.setsampwidth(2)
                out.setframerate(rate)
                out.writeframes(pcm.tobytes())
            os.replace(part, target)
            made.append(target)
        if getattr(args, "png", False):
            target = video.with_name(video.stem + "_frames")
            part = target.with_name(target.name + ".part")
            shutil.rmtree(part, ignore_errors=True)
            part.mkdir()
            run_child([ffmpeg_exe(), "-v", "error", "-y", "-i", str(video), "-fps_mode", "passthrough",
                       str(part / "%05d.png")], check=True)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(part, target)
            made.append(target)
    except (OSError, subprocess.CalledProcessError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "ffmpeg could not write the frames"
        raise MediaError(f"Could not write {target.name} ({why}). The video is saved at {video}; free some space and "
                         "run the same command again (nothing is paid again).") from None
    return made


async def cmd_generate(args) -> int:
    try:
        take = await asyncio.to_thread(parse_take, {
            "model": args.model, "prompt": args.prompt, "negative_prompt": args.negative, "duration": args.duration,
            "aspect_ratio": args.aspect, "sound": None if args.sound is None else args.sound == "on", "take": args.take, "image": args.image,
            "end_image": args.end_image, "storyboard": args.storyboard, "mode": args.mode}, "generate")
        check_timeout_minutes(args.timeout_minutes)
    except InputError as exc:
        raise with_flag_names(exc) from None
    result = await run_take(args, take, Printer())
    for extra in await asyncio.to_thread(write_extras, args, result.path):
        print(f"wrote {extra}", file=sys.stderr)
    print(("reused " if result.reused else "saved ") + str(result.path), flush=True)
    return EXIT_OK


def read_batch(path: Path) -> list[Take]:
    takes, names = [], set()
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM (Windows editors) is not part of line 1
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: is not UTF-8 text (byte {exc.start}); save it as UTF-8 and run again.") from None
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
            take = parse_take(values, f"line{number}", path.parent)
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
    takes = await asyncio.to_thread(read_batch, args.file)  # image files are read and encoded: off the loop
    if args.concurrency < 1:
        raise InputError("--concurrency: use 1 or more.")
    gate = asyncio.Semaphore(args.concurrency)
    rows: dict[str, tuple[str, str, str]] = {}

    async def one(take: Take) -> None:
        printer = Printer(prefix=f"[{take.name}] ", ids_on_stdout=False)
        async with gate:
            try:
                result = await run_take(args, take, printer, name=take.name)
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
    try:
        timeout_s = check_timeout_minutes(args.timeout_minutes) * 60
    except InputError as exc:
        raise with_flag_names(exc) from None
    printer = Printer()
    try:
        async with open_runner(args, printer) as runner:
            result = await runner.collect(args.request_id, timeout_s=timeout_s)
    finally:
        printer.close()
    print(("reused " if result.reused else "saved ") + str(result.path), flush=True)
    return EXIT_OK


async def cmd_jobs(args) -> int:
    exists = args.journal.is_file()
    jobs = await asyncio.to_thread(Journal(args.journal).all) if exists else []  # listing creates no journal
    print(f"{'date':16}  {'model':22}  {'prompt':30}  take  {'state':24}  {'price':>7}  {'request_id':34}  file")
    for job in jobs:
        submitted = job.request_id is not None or job.state is JobState.SUBMIT_UNKNOWN  # only those may be billed
        price = "free" if job.rehearsal else (f"${job.price:.2f}" if job.price is not None and submitted else "-")
        state = job.state.value + (" (rehearsal)" if job.rehearsal else "")
        prompt = "".join(ch if ch.isprintable() else "?" for ch in " ".join(str(job.payload.get("prompt", "")).split()))
        prompt = prompt if len(prompt) <= 30 else prompt[:29] + "…"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created_at))
        path = job.path if job.state is JobState.SAVED else (job.error or "")
        take = "-" if job.take < 0 else str(job.take)  # collected by id: no take
        print(f"{when:16}  {job.model_id[:22]:22}  {prompt:30}  {take:>4}  {state:24}  {price:>7}  "
              f"{(job.request_id or '-'):34}  {path}")
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line (what is wrong, where the help is), not the whole usage."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see '{self.prog} --help'); nothing was submitted\n")


def _path(text: str) -> Path:
    try:
        return Path(text).expanduser()  # '~/videos' quoted: the home folder, not a folder named '~'
    except RuntimeError:  # '~someone' who is not a user here
        raise argparse.ArgumentTypeError(f"{text!r}: no such user's home folder") from None


def build_parser() -> argparse.ArgumentParser:
    prog = "python -m gmi" if Path(sys.argv[0]).name in ("__main__.py", "-m") else Path(sys.argv[0]).name
    parser = _Parser(prog=prog, description="GMI Cloud video from the command line: the same engine "
                                     "and journal as the ComfyUI nodes (never pays twice for the same take).",
                                     epilog="Environment: GMI_API_KEY, GMI_HOME (default ~/.gmi_cloud: the key file "
                                     "'api_key' and the journal), GMI_JOURNAL, GMI_BASE_URL, GMI_SPEND_CAP_USD, "
                                     "GMI_MAX_JOBS, GMI_DECODER. Exit codes: 0 done, 1 a remote job failed, 2 bad input or "
                                     "set-up (nothing submitted), 130 interrupted (started jobs are kept).")
    journal = _Parser(add_help=False)  # accepted before or after the subcommand
    journal.add_argument("--journal", type=_path, default=argparse.SUPPRESS,
                         help="the job journal (default: $GMI_JOURNAL, else jobs.sqlite3 in $GMI_HOME or ~/.gmi_cloud)")
    journal.add_argument("--new-journal", action="store_true", default=argparse.SUPPRESS,
                         help="start the journal named by --journal or $GMI_JOURNAL when it does not exist yet (else "
                              "refused: a mistyped path would not know the takes already paid for)")
    parser.add_argument("--journal", type=_path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--new-journal", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def job_options(p):
        p.add_argument("--out", type=_path, required=True, help="folder for the MP4s (made if missing)")
        p.add_argument("--timeout-minutes", type=int, default=30, metavar="N",
                       help="stop waiting after N minutes, 1-1440; the job is kept (default 30)")
        p.add_argument("--rehearse", action="store_true",
                       help="use the free local stand-in for GMI: no key, no charge, a test clip of the real size")
        p.add_argument("--wav", action="store_true", help="also write the soundtrack as WAV next to the MP4")
        p.add_argument("--png", action="store_true", help="also write every frame as PNG, in a folder next to the MP4")

    gen = sub.add_parser("generate", parents=[journal], help="one video; prints the request id first, the path last")
    gen.add_argument("--model", default=KLING_V3_T2V.model_id, choices=list(CATALOGUE),
                     help=f"the GMI model (default {KLING_V3_T2V.model_id})")
    gen.add_argument("--prompt", help="what happens in the video (1-2500 characters; not for a storyboard)")
    gen.add_argument("--image", metavar="FILE", help="image to video: the first frame (PNG or JPEG)")
    gen.add_argument("--end-image", metavar="FILE", help="image to video: the last frame (optional)")
    gen.add_argument("--storyboard", type=_path, metavar="FILE",
                     help="kling-v3-omni: the shots, one 'seconds | prompt' line each (or a JSON list)")
    gen.add_argument("--mode", choices=["std", "pro"], help="kling-v3-omni: std 720p (default) or pro 1080p")
    gen.add_argument("--negative", metavar="TEXT", help="what to avoid (default: nothing)")
    gen.add_argument("--duration", type=int, metavar="SECONDS", help="3-15 seconds; the price is per "
                     "second (default 5)")
    gen.add_argument("--aspect", default=None, choices=ASPECTS,
                     help="text to video's aspect ratio (default 16:9; image to video follows the image)")
    gen.add_argument("--sound", choices=["on", "off"],
                     help="a synchronized soundtrack (default on; off for a storyboard)")
    gen.add_argument("--take", type=int, default=0, metavar="N",
                     help="same take of the same inputs = the same paid video, reused; a new N pays again (default 0)")
    job_options(gen)
    batch = sub.add_parser("batch", parents=[journal],
                           help="one job per JSON line; running the file again collects what exists")
    batch.add_argument("file", type=_path, help="JSONL, one object per line: prompt (required), negative_prompt, "
                       "duration, aspect_ratio, sound (true/false), take, name (used in the file name); for image "
                       "to video also model, image and end_image (files beside the batch file)")
    batch.add_argument("--concurrency", type=int, default=4, metavar="N", help="jobs at once (default 4)")
    job_options(batch)
    collect = sub.add_parser("collect", parents=[journal], help="fetch an existing request's video; submits nothing")
    collect.add_argument("request_id", metavar="REQUEST_ID", help="from a request_id line, an error or GMI's console")
    collect.add_argument("--out", type=_path, required=True, help="folder for the MP4 (made if missing)")
    collect.add_argument("--timeout-minutes", type=int, default=30, metavar="N",
                         help="stop waiting after N minutes (default 30)")
    sub.add_parser("jobs", parents=[journal], help="list the journal: date, model, prompt, take, state, price, file")
    return parser


def default_journal() -> Path:
    return Path(os.environ.get("GMI_JOURNAL") or HOME / "jobs.sqlite3").expanduser()


COMMANDS = {"generate": cmd_generate, "batch": cmd_batch, "collect": cmd_collect, "jobs": cmd_jobs}


def _stop_on_term(signum, frame) -> None:
    # Where the loop cannot take signals (Windows): a kill (SIGTERM, a closed terminal) ends like Ctrl-C did.
    raise KeyboardInterrupt


def _wait_for_answers_in_flight() -> None:
    """A POST still out on its worker thread (the loop was stopped hard): its answer is recorded when it comes, and
    leaving first would lose a paid job's id. So the command waits for it, whatever is pressed meanwhile."""
    if not posting.answer_pending():
        return

    def still(signum, frame) -> None:
        print("still waiting for GMI's answer to the submit (its job id must be recorded)", file=sys.stderr)

    print(f"waiting for GMI's answer to the submit, so a paid job's id is recorded (at most "
          f"{Timing().submit_timeout:.0f} s)", file=sys.stderr)
    stops = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {sig: signal.signal(sig, still) for sig in stops}
    try:
        posting.wait_for_all_answers(Timing().submit_timeout + 60)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def _stoppable(command):
    """A kill (SIGTERM, a closed terminal) ends like Ctrl-C: the command's task is cancelled, so a POST under way is
    carried to its answer and recorded, cleanups run and ffmpeg children are stopped."""
    task, loop = asyncio.current_task(), asyncio.get_running_loop()
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) is not signal.SIG_IGN:  # nohup
            try:
                loop.add_signal_handler(getattr(signal, name), task.cancel)
            except (NotImplementedError, RuntimeError):
                pass  # _stop_on_term stays in charge
    return await command


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not HOME.is_absolute():  # a relative GMI_HOME would give every folder a journal (and key) of its own
        print(f"error: GMI_HOME must be an absolute path, not {str(HOME)!r} (e.g. {Path.home() / '.gmi_cloud'}); "
              "nothing was submitted", file=sys.stderr)
        return EXIT_BAD_INPUT
    named = getattr(args, "journal", None) or os.environ.get("GMI_JOURNAL")
    args.journal = Path(getattr(args, "journal", None) or default_journal()).absolute()
    empty = not args.journal.is_file() or args.journal.stat().st_size == 0  # a 0-byte file knows no take either
    if named and empty and not (args.command == "collect" or getattr(args, "new_journal", False)):
        # A mistyped journal would not know the takes already paid for, and pay for them again.
        print(f"error: there is no journal at {args.journal}: check the path (--journal or GMI_JOURNAL), or add "
              "--new-journal to start one there", file=sys.stderr)
        return EXIT_BAD_INPUT
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) is not signal.SIG_IGN:  # nohup
            signal.signal(getattr(signal, name), _stop_on_term)
    try:
        connect.session_budget().scope = ("this command (each command has a cap of its own: a batch run again "
                                          "counts from $0). Raise the cap to go on")
        return asyncio.run(_stoppable(COMMANDS[args.command](args)))
    except UnrecordedJobError as exc:  # paid, and the id is in the message: not a set-up fault
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (InputError, KeyMissingError, SpendCapError, JournalError) as exc:  # nothing was submitted
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (GMIError, OSError, subprocess.CalledProcessError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, asyncio.CancelledError):
        _wait_for_answers_in_flight()
        print("interrupted: started jobs are kept in the journal; run the same command again to collect them",
              file=sys.stderr)
        return EXIT_INTERRUPTED
