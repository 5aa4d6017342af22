"""Checks made before anything is paid for: a take that cannot be delivered must not be bought.

One preflight for the nodes and the command line: a decoder that works, an output folder that takes the MP4, and
(when frames are wanted) memory for them. The key is checked by the client before its first request. Each failure is
one line that says how to fix it; nothing has been sent to GMI when it is raised.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from . import media
from .errors import InputError, MediaError
from .media_plan import DecodeOptions, VideoInfo, available_memory, check_memory, plan_frames
from .models import ModelSpec

MP4_BYTES_PER_SECOND = 4 << 20  # generous for Kling's 720p/1080p H.264 (a 15 s 720p clip is ~10-20 MB)


def check_output_folder(folder: Path, video_seconds: float) -> None:
    """The folder exists (made if needed), takes a file (written, synced, removed) and has room for the MP4."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".gmi-write-check-{uuid.uuid4().hex}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise InputError(f"The output folder {folder} cannot be written ({exc.strerror or exc}): choose a folder "
                         "you can write to (command line: --out). Nothing was submitted.") from None
    need = int(video_seconds * MP4_BYTES_PER_SECOND) + (16 << 20)
    if free < need:
        raise InputError(f"The output folder {folder} has {free / 1e6:.0f} MB free; this video needs about "
                         f"{need / 1e6:.0f} MB. Free some space or choose another folder. Nothing was submitted.")


def check_decoder() -> None:
    """A decoder works here (the imageio-ffmpeg binary, an ffmpeg on PATH, or PyAV): the paid video can be read."""
    try:
        media.decoder()
    except MediaError as exc:
        raise InputError(f"{exc} Nothing was submitted.") from None


def check_frames_fit(spec: ModelSpec, payload: dict, options: DecodeOptions, available: int | None = None) -> None:
    """The frames the model will deliver, decoded with ``options``, fit in the memory free now."""
    width, height = spec.frame_size(payload)
    seconds = spec.seconds(payload)
    info = VideoInfo(width, height, spec.fps, int(round(seconds * spec.fps)) + 1, float(seconds))
    check_memory(plan_frames(info, options), available_memory() if available is None else available,
                 after="or unlink its frames output. Nothing was submitted.")
