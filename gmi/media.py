"""MP4 -> frames and audio, with whichever decoder this Python has, chosen once: the ffmpeg binary that
imageio-ffmpeg ships, else an ffmpeg on PATH, else PyAV (which every ComfyUI ships). All give the same frames, byte
for byte, and the same audio. ``GMI_DECODER=ffmpeg|pyav`` forces one.

The decoders live in decode_ffmpeg.py and decode_av.py; what a decode gives and needs is in media_plan.py.
"""
from __future__ import annotations

import enum
import functools
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import decode_ffmpeg
from .decode_ffmpeg import child_environ, run_child, start_child  # noqa: F401 - the pack's process starters
from .errors import MediaError
from .media_plan import (SILENT_CHANNELS, SILENT_RATE, DecodeOptions, FramePlan, VideoInfo,  # noqa: F401
                         available_memory, check_memory, check_out, plan_frames, silence)
from .media_plan import prefault as _prefault  # noqa: F401 - bench/decode.py times it alone

DECODER_ENV = "GMI_DECODER"
_REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"


class Backend(enum.Enum):
    FFMPEG = "ffmpeg"  # an ffmpeg binary, run as a child process
    PYAV = "pyav"      # PyAV's libav, in this process


@dataclass(frozen=True)
class Decoder:
    """The decoder in use: its backend, the binary for FFMPEG, and where it came from (for logs and errors)."""

    backend: Backend
    path: str | None = None
    source: str = ""

    def __str__(self) -> str:
        return f"{self.backend.value} ({self.source})"


def _quoted(arg: str) -> str:
    return f'"{arg}"' if any(c.isspace() for c in arg) else arg  # pastes whole in sh, cmd and PowerShell alike


def _fix() -> str:
    """How to get a decoder, as a command for this very Python (ComfyUI's, in a node)."""
    python = _quoted(sys.executable)
    if _REQUIREMENTS.is_file():
        return (f"install the pack's requirements into ComfyUI's Python "
                f"({python} -m pip install -r {_quoted(str(_REQUIREMENTS))})")
    return f"install imageio-ffmpeg into this Python ({python} -m pip install imageio-ffmpeg)"  # pip-installed CLI


def _find_binary(search_path: str | None) -> tuple[Decoder | None, list[str]]:
    """imageio-ffmpeg's binary, else ``ffmpeg`` on ``search_path``, if it runs; with the reasons for each miss."""
    misses = []
    try:
        import imageio_ffmpeg  # lazy: importing the pack must stay cheap

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        why = decode_ffmpeg.usable(exe)
        if why is None:
            return Decoder(Backend.FFMPEG, exe, "imageio-ffmpeg"), misses
        misses.append(f"imageio-ffmpeg: {why}")
    except ImportError:
        misses.append("imageio-ffmpeg: not installed")
    except Exception as exc:  # noqa: BLE001 - its binary missing for this platform, or any other failure
        misses.append(f"imageio-ffmpeg: {exc}")
    exe = shutil.which("ffmpeg", path=search_path)
    why = "not found" if exe is None else decode_ffmpeg.usable(exe)
    if why is None:
        return Decoder(Backend.FFMPEG, exe, "ffmpeg on PATH"), misses
    misses.append(f"ffmpeg on PATH: {why}")
    return None, misses


def _find_pyav() -> tuple[Decoder | None, str]:
    try:
        import av

        av.codec.Codec("h264", "r")  # a PyAV built without the H.264 decoder cannot read what GMI sends
    except ImportError:
        return None, "PyAV: not installed"
    except Exception as exc:  # noqa: BLE001 - a broken install fails in many ways
        return None, f"PyAV: {exc}"
    return Decoder(Backend.PYAV, None, f"PyAV {av.__version__}"), ""


def find_decoder(choice: str = "", search_path: str | None = None) -> Decoder:
    """The decoder for ``choice`` ("" or "auto", "ffmpeg", "pyav"), looking for binaries on ``search_path`` (None:
    PATH). Raises MediaError, in one line that says how to fix it, when there is none."""
    choice = choice.strip().lower()
    if choice not in ("", "auto", "ffmpeg", "pyav"):
        raise MediaError(f"{DECODER_ENV}={choice!r} is not a decoder: set it to ffmpeg or pyav, or unset it to "
                         f"use whichever is installed.")
    misses = []
    if choice in ("", "auto", "ffmpeg"):
        found, misses = _find_binary(search_path)
        if found:
            return found
        if choice == "ffmpeg":
            raise MediaError(f"{DECODER_ENV}=ffmpeg but there is no working ffmpeg: {_fix()}, put ffmpeg on PATH, or "
                             f"unset {DECODER_ENV} ({'; '.join(misses)}).")
    found, miss = _find_pyav()
    if found:
        return found
    if choice == "pyav":
        raise MediaError(f"{DECODER_ENV}=pyav but PyAV does not work ({miss}): {_quoted(sys.executable)} -m pip "
                         f"install av, or unset {DECODER_ENV}.")
    raise MediaError(f"No video decoder: {_fix()} or put ffmpeg on PATH ({'; '.join(misses + [miss])}).")


@functools.lru_cache(maxsize=16)
def _decoder_for(choice: str, search_path: str | None) -> Decoder:
    return find_decoder(choice, search_path)  # a failure raises and is not remembered: a fix is seen at once


def decoder() -> Decoder:
    """The decoder every decode uses, found on first use (GMI_DECODER forces one) and then remembered. Cheap enough
    for a preflight; raises MediaError, one line saying how to fix it, when there is none."""
    found = _decoder_for(os.environ.get(DECODER_ENV, ""), os.environ.get("PATH"))
    if found.path is not None and not os.path.exists(found.path):
        # The binary went away while the process ran (imageio-ffmpeg updated or removed): choose again.
        _decoder_for.cache_clear()
        found = _decoder_for(os.environ.get(DECODER_ENV, ""), os.environ.get("PATH"))
    return found


@functools.lru_cache(maxsize=16)
def _binary_for(search_path: str | None) -> str:
    found, misses = _find_binary(search_path)
    if found is None:
        raise MediaError(f"No ffmpeg program: {_fix()} or put ffmpeg on PATH ({'; '.join(misses)}).")
    return found.path


def ffmpeg_exe() -> str:
    """An ffmpeg binary for work beyond decoding (encoding, test clips): imageio-ffmpeg's, else one on PATH."""
    path = _binary_for(os.environ.get("PATH"))
    if not os.path.exists(path):  # removed while the process ran: look again
        _binary_for.cache_clear()
        path = _binary_for(os.environ.get("PATH"))
    return path


def probe(path: Path) -> VideoInfo:
    """Size (upright), frame rate, exact frame count (demuxed, not decoded) and audio format of the first streams."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"Video file not found: {path}")
    chosen = decoder()
    if chosen.backend is Backend.PYAV:
        from . import decode_av

        return decode_av.probe(path)
    return decode_ffmpeg.probe(chosen.path, path)


def verify_video(path: Path) -> None:
    """Raises MediaError unless ``path`` is a whole video: every packet of every stream demuxes without error (a
    page of HTML, or a file cut short, fails here). Demuxing only, no decoding: well under a second for 15 s of 720p."""
    chosen = decoder()
    if chosen.backend is Backend.PYAV:
        from . import decode_av

        return decode_av.verify_video(Path(path))
    return decode_ffmpeg.verify_video(chosen.path, Path(path))


def decode_frames(path: Path, info: VideoInfo, out: np.ndarray, *, options: DecodeOptions = DecodeOptions(),
                  check: Callable[[], None] = lambda: None,
                  on_frames: Callable[[int, int], None] = lambda done, total: None) -> int:
    """Decode the video into ``out`` (plan_frames' shape, float32, 0..1). Returns the frames written. ``check`` is
    called as frames arrive and may raise to stop (the decoder is then ended); ``on_frames(done, total)`` reports."""
    plan = plan_frames(info, options)
    n = check_out(out, plan)
    chosen = decoder()
    if chosen.backend is Backend.PYAV:
        from . import decode_av

        done = decode_av.decode_frames(Path(path), info, out[:n], options, check, on_frames)
    else:
        done = decode_ffmpeg.decode_frames(chosen.path, Path(path), info, out[:n], options, check, on_frames)
    if done == 0:
        raise MediaError(f"Could not decode {Path(path).name}: no frames came out.")
    return done


def decode_audio(path: Path, info: VideoInfo) -> tuple[np.ndarray, int]:
    """The first audio track as [channels, samples] float32 in -1..1 at the file's rate; silence of the video's
    length when the file has no audio track."""
    if not info.has_audio:
        return silence(info)
    chosen = decoder()
    if chosen.backend is Backend.PYAV:
        from . import decode_av

        wave = decode_av.decode_audio(Path(path), info)
    else:
        wave = decode_ffmpeg.decode_audio(chosen.path, Path(path), info)
    np.clip(wave, -1.0, 1.0, out=wave)
    return wave, info.sample_rate


@dataclass
class DecodedClip:
    info: VideoInfo
    frames: Any = None                   # what ``alloc`` returned, trimmed to the frames decoded; None if not asked
    audio: tuple[np.ndarray, int] | None = None  # ([channels, samples] float32, sample rate); None if not asked


def decode_clip(path: Path, *, frames: bool = True, audio: bool = True, options: DecodeOptions = DecodeOptions(),
                alloc: Callable[[tuple[int, ...]], Any] = lambda shape: np.empty(shape, np.float32),
                check: Callable[[], None] = lambda: None,
                on_frames: Callable[[int, int], None] = lambda done, total: None,
                info: VideoInfo | None = None) -> DecodedClip:
    """Everything the nodes (and bench/decode.py) decode, in one call: frames into one buffer from ``alloc`` (a
    float32 array or a CPU tensor), the audio alongside on a second thread. Blocking: run it off the event loop."""
    info = probe(path) if info is None else info
    clip = DecodedClip(info)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gmi-audio") as pool:
        sound = pool.submit(decode_audio, path, info) if audio else None
        if frames:
            plan = plan_frames(info, options)
            check_memory(plan)
            buffer = alloc(plan.shape)
            count = decode_frames(path, info, np.asarray(buffer), options=options, check=check, on_frames=on_frames)
            clip.frames = buffer if count == plan.count else buffer[:count]
        if sound is not None:
            clip.audio = sound.result()
    return clip


def read_image(path: Path) -> np.ndarray:
    """A still (PNG, JPEG, …) as ComfyUI's IMAGE batch of one, float32 [1, H, W, 3] in 0..1, with the same decoder as
    the videos; MediaError, one line, when it is not a picture."""
    path = Path(path)
    info = probe(path)
    out = np.empty((1, info.height, info.width, 3), np.float32)
    decode_frames(path, info, out, options=DecodeOptions(max_frames=1))
    return out
