"""Checks made before anything is paid for: a take that cannot be delivered must not be bought.

Each failure is one InputError line that says how to fix it; nothing has been sent to GMI when it is raised.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from .errors import InputError

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
