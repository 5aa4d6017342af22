"""MP4 -> frames and audio, with the ffmpeg binary that imageio-ffmpeg ships.

Frames stream from ffmpeg as rgb24 straight into slices of a caller-provided float32 array: ffmpeg decodes on one
core while Python converts on the other, and nothing the size of the clip is ever held twice.
"""
from __future__ import annotations

import ctypes
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import InputError, MediaError, MemoryShortError

SILENT_RATE = 44100
SILENT_CHANNELS = 2
CHUNK_BYTES = 8 << 20     # one uint8 staging buffer between ffmpeg and the float tensor
STAGING_BUFFERS = 3       # staging in flight: 24 MiB in all, under 1 % of a 720p 15 s tensor
PIPE_BYTES = 1 << 20
PAGE = 4096
PREFAULT_STEP = 8 << 20   # small: populating holds the address space's lock, and 64 MiB at once stalled the converter
MADV_POPULATE_WRITE = 23  # Linux 5.14+; older kernels ignore it and the converter faults pages in itself
PR_SET_PDEATHSIG = 1
LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "3.0(back)": 3, "quad": 4, "4.0": 4, "quad(side)": 4,
                   "3.1": 4, "4.1": 5, "5.0": 5, "5.0(side)": 5, "5.1": 6, "5.1(side)": 6, "6.0": 6, "6.1": 7,
                   "7.0": 7, "7.1": 8, "7.1(wide)": 8, "octagonal": 8, "downmix": 2}


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


def ffmpeg_exe() -> str:
    import imageio_ffmpeg  # lazy: importing the pack must stay cheap

    return imageio_ffmpeg.get_ffmpeg_exe()


def child_environ() -> dict[str, str]:
    """This process's environment without the pack's own variables (GMI_API_KEY above all)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("GMI_")}


_prctl = None  # libc's prctl, looked up in the parent: between fork and exec the child should do almost nothing


def _die_with_parent(parent: int) -> None:
    # Runs in the child between fork and exec. The signal follows the thread that spawned the child, not the process:
    # that is safe here because every spawning thread waits on its child for the child's whole life.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the signal was armed


def start_child(cmd: list[str], **popen: Any) -> subprocess.Popen:
    """Every process the pack starts starts here: it gets no GMI_ variables, and on Linux dies if the pack dies."""
    global _prctl
    preexec = None
    if sys.platform.startswith("linux"):
        if _prctl is None:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        preexec = partial(_die_with_parent, os.getpid())
    return subprocess.Popen(cmd, env=child_environ(), preexec_fn=preexec, **popen)


def run_child(cmd: list[str], *, check: bool = False, **popen: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, ...)`` through start_child."""
    with start_child(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen) as proc:
        try:
            out, err = proc.communicate()
        except BaseException:
            proc.kill()
            raise
    if check and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, out, err)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _last_lines(text: str, n: int = 2) -> str:
    # ffmpeg's progress lines ("frame= ... size= ...") say nothing about what went wrong.
    lines = [ln.strip() for ln in text.strip().splitlines()
             if ln.strip() and not ln.lstrip().startswith(("frame=", "size="))]
    return " / ".join(lines[-n:]) or "no message"


def probe(path: Path) -> VideoInfo:
    """Size, frame rate, exact frame count (demuxed, not decoded) and audio format of the first streams."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"Video file not found: {path}")
    proc = run_child([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v:0", "-c", "copy",
                      "-f", "null", "-"], text=True, errors="replace")
    err = proc.stderr
    video = re.search(r"Stream #0:\d+.*?: Video: .*?(\d{2,5})x(\d{2,5})", err)
    if proc.returncode != 0 or video is None:
        raise MediaError(f"Not a readable video: {path.name} ({_last_lines(err)})")
    width, height = int(video.group(1)), int(video.group(2))
    line = err[video.start():err.find("\n", video.start())]
    rate = re.search(r"([\d.]+)(k?) fps", line) or re.search(r"([\d.]+)(k?) tbr", line)
    fps = float(rate.group(1)) * (1000 if rate.group(2) else 1) if rate else 0.0
    rotation = re.search(r"rotation of (-?[\d.]+) degrees", err)
    if rotation and round(abs(float(rotation.group(1)))) % 180 == 90:
        width, height = height, width
    frames = re.findall(r"frame=\s*(\d+)", err)
    frame_count = int(frames[-1]) if frames else 0
    dur = re.search(r"Duration: (\d+):(\d+):([\d.]+)", err)
    duration = int(dur.group(1)) * 3600 + int(dur.group(2)) * 60 + float(dur.group(3)) if dur else 0.0
    if fps <= 0 and duration > 0:
        fps = frame_count / duration
    if frame_count <= 0:
        raise MediaError(f"The video {path.name} has no frames.")
    audio = re.search(r"Stream #0:\d+.*?: Audio: [^,]+, (\d+) Hz, ([^,\n]+)", err)
    sample_rate = channels = None
    if audio:
        sample_rate = int(audio.group(1))
        layout = audio.group(2).strip()
        count = re.match(r"(\d+) channels", layout)
        channels = int(count.group(1)) if count else LAYOUT_CHANNELS.get(layout, 2)
    return VideoInfo(width, height, fps, frame_count, duration, sample_rate, channels)


def verify_video(path: Path) -> None:
    """Raises MediaError unless ``path`` is a whole video: every packet of every stream demuxes without error (a
    page of HTML, or a file cut short, fails here). Demuxing only, no decoding: well under a second for 15 s of 720p."""
    proc = run_child([ffmpeg_exe(), "-hide_banner", "-nostdin", "-xerror", "-i", str(path), "-map", "0", "-c", "copy",
                      "-f", "null", "-"], text=True, errors="replace")
    if proc.returncode != 0 or not re.search(r"Stream #0:\d+.*?: Video: ", proc.stderr):
        raise MediaError(f"{Path(path).name} is not a whole video ({_last_lines(proc.stderr)})")


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


def check_memory(plan: FramePlan, available: int | None = None) -> None:
    """Refuses, in one line, a decode that would not fit in memory, saying which option to lower."""
    available = available_memory() if available is None else available
    need = plan.nbytes + (256 << 20)  # the tensor, plus staging and the audio
    if available is None or need <= available:
        return
    gib = 1 << 30
    raise MemoryShortError(
        f"Decoding {plan.count} frames at {plan.width}x{plan.height} needs {need / gib:.1f} GiB but only "
        f"{available / gib:.1f} GiB is free: set max_side (e.g. 640), max_frames or every_nth on the node, or close "
        f"other programs. The video itself is saved.")


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


def _prefault(out: np.ndarray, stop: threading.Event) -> None:
    """Makes the output's pages present ahead of the converter. Fresh memory costs a fault per page (and on VMs a
    host round trip); done here, on the side, the converter finds them ready. Each call holds the process's memory
    map lock while it populates: in 64 MiB steps the converter and the pipe reader queued behind it and the decode
    ran on one core for seconds (720p 15 s: 2.27x ffmpeg); in 8 MiB steps both cores stay busy (1.85x)."""
    step = PREFAULT_STEP
    for offset in range(0, out.nbytes, step):
        if stop.is_set():
            return
        _madvise(out, MADV_POPULATE_WRITE, offset, min(step, out.nbytes - offset))


def _video_cmd(path: Path, info: VideoInfo, plan: FramePlan, options: DecodeOptions) -> list[str]:
    filters = []
    if options.every_nth > 1:
        filters.append(f"select='not(mod(n\\,{options.every_nth}))'")
    if (plan.width, plan.height) != (info.width, info.height):
        filters.append(f"scale={plan.width}:{plan.height}:flags=area")
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-map", "0:v:0"]
    if filters:
        cmd += ["-vf", ",".join(filters)]
    return cmd + ["-fps_mode", "passthrough", "-frames:v", str(plan.count), "-f", "rawvideo", "-pix_fmt", "rgb24",
                  "-"]


def decode_frames(path: Path, info: VideoInfo, out: np.ndarray, *, options: DecodeOptions = DecodeOptions(),
                  check: Callable[[], None] = lambda: None,
                  on_frames: Callable[[int, int], None] = lambda done, total: None) -> int:
    """Decode the video into ``out`` (plan_frames' shape, float32, 0..1). Returns the frames written.
    ffmpeg decodes in its own process; a reader thread drains its pipe into a few small uint8 buffers, and this
    thread converts each into its slice of ``out`` while a third makes the pages of ``out`` present ahead of it.
    (Transparent huge pages were tried and dropped: on a VM their first touch stalled decodes up to 6x ffmpeg.)
    ``check`` is called between chunks and may raise to stop (ffmpeg is then ended)."""
    plan = plan_frames(info, options)
    n, h, w, c = out.shape
    if (h, w, c) != (plan.height, plan.width, 3) or n < 1 or out.dtype != np.float32:
        raise ValueError(f"out must be [N, {plan.height}, {plan.width}, 3] float32, got {out.shape} {out.dtype}")
    n = min(n, plan.count)
    frame_bytes = h * w * 3
    per_chunk = max(1, min(n, CHUNK_BYTES // frame_bytes))
    scale = np.float32(1.0 / 255.0)
    stop = threading.Event()
    free: queue.Queue = queue.Queue()
    filled: queue.Queue = queue.Queue()
    for _ in range(STAGING_BUFFERS):
        free.put(np.empty((per_chunk, h, w, 3), dtype=np.uint8))
    cmd = _video_cmd(path, info, replace(plan, count=n), options)
    with tempfile.TemporaryFile() as errfile:
        proc = start_child(cmd, stdout=subprocess.PIPE, stderr=errfile, bufsize=0)
        _grow_pipe(proc.stdout)

        def drain() -> None:
            # Decouples ffmpeg from the converter: a 64 KiB pipe alone would make them take turns.
            try:
                while not stop.is_set():
                    buf = free.get()
                    if buf is None:
                        return
                    got = _read_full(proc.stdout, memoryview(buf).cast("B"))
                    filled.put((buf, got // frame_bytes))
                    if got < buf.nbytes:
                        return
            except (OSError, ValueError):
                pass
            finally:
                filled.put(None)

        threads = [threading.Thread(target=drain, name="gmi-decode-read", daemon=True),
                   threading.Thread(target=_prefault, args=(out[:n], stop), name="gmi-decode-touch", daemon=True)]
        for thread in threads:
            thread.start()
        done = 0
        try:
            while done < n:
                check()
                item = filled.get()
                if item is None:
                    break
                buf, whole = item
                whole = min(whole, n - done)
                if whole:
                    np.multiply(buf[:whole], scale, out=out[done:done + whole])
                    done += whole
                    on_frames(done, n)
                free.put(buf)
        finally:
            stop.set()
            if proc.poll() is None and done < n:
                proc.kill()
            free.put(None)
            code = proc.wait()
            for thread in threads:
                thread.join()
            proc.stdout.close()
        if done < n and code != 0:
            errfile.seek(0)
            message = errfile.read().decode("utf-8", "replace")
            raise MediaError(f"Could not decode {Path(path).name}: {_last_lines(message)}")
    if done == 0:
        raise MediaError(f"Could not decode {Path(path).name}: no frames came out.")
    return done


def _grow_pipe(stream) -> None:
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):
        pass  # not Linux, or above the user's pipe limit: the default works, a little slower


def _read_full(stream, buf: memoryview) -> int:
    """Fill ``buf`` from ``stream``; fewer bytes only at end of stream."""
    got = 0
    while got < len(buf):
        k = stream.readinto(buf[got:])
        if not k:
            break
        got += k
    return got


def decode_audio(path: Path, info: VideoInfo) -> tuple[np.ndarray, int]:
    """The first audio track as [channels, samples] float32 in -1..1 at the file's rate; silence of the video's
    length when the file has no audio track."""
    if not info.has_audio:
        samples = round(info.frame_count / info.fps * SILENT_RATE) if info.fps > 0 else round(info.duration * SILENT_RATE)
        return np.zeros((SILENT_CHANNELS, samples), dtype=np.float32), SILENT_RATE
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0", "-ac", str(info.channels),
           "-ar", str(info.sample_rate), "-f", "f32le", "-c:a", "pcm_f32le", "-"]
    proc = run_child(cmd)
    if proc.returncode != 0:
        raise MediaError(f"Could not decode the audio of {Path(path).name}: "
                         f"{_last_lines(proc.stderr.decode('utf-8', 'replace'))}")
    flat = np.frombuffer(proc.stdout, dtype="<f4")
    flat = flat[: len(flat) - len(flat) % info.channels]
    wave = flat.reshape(-1, info.channels).T.copy()  # interleaved -> planar
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
    float32 array or a CPU tensor), the audio alongside in a second ffmpeg. Blocking: run it off the event loop."""
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
