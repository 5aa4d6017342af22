"""Storyboards for Kling v3 Omni's multi-shot jobs: up to six shots, each a prompt and whole seconds, in one paid job;
and where each shot lies in the delivered video.

Kling's own API (GMI's page follows it for ``kling-v3-omni``): ``multi_shot: true``, ``shot_type: "customize"``,
``multi_prompt: [{"index": 1, "prompt": "…", "duration": "2"}, …]`` with 1-6 shots of at most 512 characters, each at
least 1 s, their sum the job's ``duration`` ("3"-"15").
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from .errors import InputError

MAX_SHOTS = 6
MAX_SHOT_CHARS = 512
TOTAL_SECONDS = (3, 15)


@dataclass(frozen=True)
class Shot:
    prompt: str
    seconds: int


def _shot(prompt: Any, seconds: Any, where: str) -> Shot:
    text = unicodedata.normalize("NFC", str(prompt or "")).strip()
    if not text:
        raise InputError(f"{where}: has no prompt; write what happens in this shot.")
    if len(text) > MAX_SHOT_CHARS:
        raise InputError(f"{where}: is {len(text)} characters long; a shot takes at most {MAX_SHOT_CHARS}. Shorten it.")
    try:
        whole = int(str(seconds).strip())
    except ValueError:
        raise InputError(f"{where}: {seconds!r} is not a whole number of seconds; write e.g. '3 | a fox runs'.") from None
    if whole < 1:
        raise InputError(f"{where}: lasts {whole} s; a shot lasts at least 1 s.")
    return Shot(text, whole)


def parse(value: Any) -> list[Shot]:
    """Shots from the node's text (one ``seconds | prompt`` line per shot; blank and ``#`` lines skipped) or from a
    list of {"prompt", "duration"} objects (a batch line, a JSON file). One InputError line for what is wrong."""
    shots: list[Shot] = []
    if isinstance(value, str):
        for number, line in enumerate(value.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            seconds, bar, prompt = line.partition("|")
            if not bar:
                raise InputError(f"storyboard line {number}: write 'seconds | prompt', e.g. '3 | a fox runs'.")
            shots.append(_shot(prompt, seconds, f"storyboard line {number}"))
    elif isinstance(value, list):
        for number, item in enumerate(value, 1):
            if not isinstance(item, dict):
                raise InputError(f"storyboard shot {number}: expected {{\"prompt\": \"...\", \"duration\": 3}}.")
            shots.append(_shot(item.get("prompt"), item.get("duration"), f"storyboard shot {number}"))
    else:
        raise InputError("storyboard: write one 'seconds | prompt' line per shot.")
    if not 1 <= len(shots) <= MAX_SHOTS:
        raise InputError(f"storyboard: has {len(shots)} shots; use 1 to {MAX_SHOTS}.")
    total = sum(shot.seconds for shot in shots)
    if not TOTAL_SECONDS[0] <= total <= TOTAL_SECONDS[1]:
        raise InputError(f"storyboard: its shots last {total} s in all; the total must be {TOTAL_SECONDS[0]}-"
                         f"{TOTAL_SECONDS[1]} s. Change the seconds of a shot.")
    return shots


def wire(shots: list[Shot]) -> list[dict]:
    """``multi_prompt`` as Kling takes it (index from 1, duration as a string)."""
    return [{"index": i, "prompt": shot.prompt, "duration": str(shot.seconds)} for i, shot in enumerate(shots, 1)]


def spans(multi_prompt: list[dict], frame_count: int, fps: float) -> list[dict]:
    """Where each shot lies in the delivered video: each boundary at its requested second on the file's real frame
    rate (clamped to the real frame count); the last shot runs to the last frame, whatever the file's length."""
    out, before = [], 0
    for number, item in enumerate(multi_prompt):
        first = min(frame_count, round(before * fps))
        before += int(item["duration"])
        last = frame_count if number == len(multi_prompt) - 1 else min(frame_count, round(before * fps))
        out.append({"index": int(item["index"]), "prompt": item["prompt"], "first_frame": first,
                    "frame_count": last - first, "start": first / fps, "end": last / fps})
    return out


def select(shots: dict, index: int, frame_total: int, sample_rate: int) -> tuple[slice, slice]:
    """The frames and the audio samples of shot ``index`` (from 1) of a storyboard node's ``shots`` output; one
    InputError line for an index or frames that do not belong to it."""
    listed = shots["shots"]
    if not 1 <= index <= len(listed):
        raise InputError(f"index: {index} is not a shot of this storyboard; use 1-{len(listed)}.")
    if frame_total != shots["frame_count"]:
        raise InputError(f"frames: {frame_total} frames, but the shots describe {shots['frame_count']}; connect the "
                         "storyboard node's own frames output.")
    shot = listed[index - 1]
    frames = slice(shot["first_frame"], shot["first_frame"] + shot["frame_count"])
    return frames, slice(round(shot["start"] * sample_rate), round(shot["end"] * sample_rate))
