"""What a decode gives and whether it fits, whichever decoder runs it: the video's facts, the options, the frame
batch they make, the filters that make it, and the memory it needs.
"""
from __future__ import annotations

import ctypes
import sys
import threading
from dataclasses import dataclass

import numpy as np

from .errors import InputError, MemoryShortError

SILENT_RATE = 44100
SILENT_CHANNELS = 2
PAGE = 4096
PREFAULT_STEP = 8 << 20   # small: populating holds the address space's lock, and 64 MiB at once stalled the converter
MADV_POPULATE_WRITE = 23  # Linux 5.14+; older kernels ignore it and the converter faults pages in itself
TO_FLOAT = np.float32(1.0 / 255.0)  # rgb24 -> 0..1, the one conversion every decoder uses


@dataclass(frozen=True)
class VideoInfo:
    width: int          # as decoded (rotation applied)
    height: int
    fps: float
    frame_count: int
    duration: float
    sample_rate: int | None = None  # None: no audio track
    channels: int | None = None

    @property
    def has_audio(self) -> bool:
        return self.sample_rate is not None


@dataclass(frozen=True)
class DecodeOptions:
    """What of the video to decode: ``max_frames`` 0 = all, ``every_nth`` 1 = every frame, ``max_side`` 0 = native
    size (else the longer side is scaled down to it, in the decoder)."""

    max_frames: int = 0
    every_nth: int = 1
    max_side: int = 0

    def __post_init__(self):
        for name, low in (("max_frames", 0), ("every_nth", 1), ("max_side", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name}: {value!r} is not allowed; use a whole number {low} or more.")
        if 0 < self.max_side < 16:
            raise InputError(f"max_side: {self.max_side} is too small; use 0 (native) or 16 or more.")


@dataclass(frozen=True)
class FramePlan:
    """The IMAGE batch the options give: frames x height x width x 3."""

    count: int
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.count, self.height, self.width, 3)

    @property
    def nbytes(self) -> int:
        return self.count * self.height * self.width * 3 * 4


def plan_frames(info: VideoInfo, options: DecodeOptions = DecodeOptions()) -> FramePlan:
    width, height = info.width, info.height
    if options.max_side and max(width, height) > options.max_side:
        scale = options.max_side / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    count = -(-info.frame_count // options.every_nth)
    if options.max_frames:
        count = min(count, options.max_frames)
    return FramePlan(count, height, width)


def video_filters(info: VideoInfo, plan: FramePlan, options: DecodeOptions) -> list[tuple[str, str]]:
    """The libavfilter chain, after rotation, that turns decoded frames into the plan: (filter, arguments) pairs.
    Every decoder runs this same chain, which is what keeps their frames identical."""
    filters = []
    if options.every_nth > 1:
        filters.append(("select", f"not(mod(n,{options.every_nth}))"))
    if (plan.width, plan.height) != (info.width, info.height):
        filters.append(("scale", f"{plan.width}:{plan.height}:flags=area"))
    return filters


def check_out(out: np.ndarray, plan: FramePlan) -> int:
    """The number of frames to write into ``out``; raises ValueError unless it is [N, h, w, 3] float32."""
    n, h, w, c = out.shape
    if (h, w, c) != (plan.height, plan.width, 3) or n < 1 or out.dtype != np.float32:
        raise ValueError(f"out must be [N, {plan.height}, {plan.width}, 3] float32, got {out.shape} {out.dtype}")
    return min(n, plan.count)


def silence(info: VideoInfo) -> tuple[np.ndarray, int]:
    """Stereo silence as long as the video, for clips without an audio track."""
    seconds = info.frame_count / info.fps if info.fps > 0 else info.duration
    return np.zeros((SILENT_CHANNELS, round(seconds * SILENT_RATE)), dtype=np.float32), SILENT_RATE


def available_memory() -> int | None:
    """Bytes the system can give without swapping (MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # ComfyUI ships it; used where /proc is absent (macOS, Windows)

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - any failure means "unknown"
        return None


def check_memory(plan: FramePlan, available: int | None = None,
                 after: str = "or close other programs. The video itself is saved.") -> None:
    """Refuses, in one line, a decode that would not fit in memory, saying which option to lower (``after``: the
    message's end, as it fits the moment: after the download, or before anything is paid)."""
    available = available_memory() if available is None else available
    need = plan.nbytes + (256 << 20)  # the tensor, plus staging and the audio
    if available is None or need <= available:
        return
    gib = 1 << 30
    raise MemoryShortError(
        f"Decoding {plan.count} frames at {plan.width}x{plan.height} needs {need / gib:.1f} GiB but only "
        f"{available / gib:.1f} GiB is free: set max_side (e.g. 640), max_frames or every_nth on the node, {after}")


_libc = None


def _madvise(buf: np.ndarray, advice: int, offset: int, length: int) -> None:
    """Best-effort madvise on part of ``buf`` (Linux only; elsewhere nothing happens)."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    addr = buf.ctypes.data + offset
    end = addr + length
    start = (addr + PAGE - 1) // PAGE * PAGE
    if end - start >= PAGE:
        _libc.madvise(start, (end - start) // PAGE * PAGE, advice)


def prefault(out: np.ndarray, stop: threading.Event) -> None:
    """Makes the output's pages present ahead of the converter. Fresh memory costs a fault per page (and on VMs a
    host round trip); done here, on the side, the converter finds them ready. Each call holds the process's memory
    map lock while it populates: in 64 MiB steps the converter and the pipe reader queued behind it and the decode
    ran on one core for seconds (720p 15 s: 2.27x ffmpeg); in 8 MiB steps both cores stay busy (1.85x)."""
    step = PREFAULT_STEP
    for offset in range(0, out.nbytes, step):
        if stop.is_set():
            return
        _madvise(out, MADV_POPULATE_WRITE, offset, min(step, out.nbytes - offset))


def start_prefault(out: np.ndarray, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=prefault, args=(out, stop), name="gmi-decode-touch", daemon=True)
    thread.start()
    return thread
