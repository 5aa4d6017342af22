"""The ffmpeg-binary decoder (imageio-ffmpeg's, or one on PATH), and the one place the pack starts processes.

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
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import MediaError
from .media_plan import TO_FLOAT, DecodeOptions, FramePlan, VideoInfo, start_prefault, video_filters

CHUNK_BYTES = 8 << 20     # one uint8 staging buffer between ffmpeg and the float tensor
STAGING_BUFFERS = 3       # staging in flight: 24 MiB in all, under 1 % of a 720p 15 s tensor
PIPE_BYTES = 1 << 20
PR_SET_PDEATHSIG = 1
LAYOUT_CHANNELS = {  # every layout name ffmpeg prints (libavutil's channel_layout_map); others print "N channels"
    "mono": 1, "stereo": 2, "binaural": 2, "downmix": 2, "2.1": 3, "3.0": 3, "3.0(back)": 3, "4.0": 4, "quad": 4,
    "quad(side)": 4, "3.1": 4, "5.0": 5, "5.0(side)": 5, "4.1": 5, "5.1": 6, "5.1(side)": 6, "6.0": 6,
    "6.0(front)": 6, "3.1.2": 6, "hexagonal": 6, "6.1": 7, "6.1(back)": 7, "6.1(front)": 7, "7.0": 7, "7.0(front)": 7,
    "7.1": 8, "7.1(wide)": 8, "7.1(wide-side)": 8, "5.1.2": 8, "5.1.2(back)": 8, "7.1(top)": 8, "octagonal": 8,
    "cube": 8, "5.1.4": 10, "7.1.2": 10, "7.1.4": 12, "7.2.3": 12, "9.1.4": 14, "9.1.6": 16, "hexadecagonal": 16,
    "22.2": 24}


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


def usable(exe: str) -> str | None:
    """None when ``exe`` runs and has what the pack uses (``-fps_mode``: ffmpeg 5.1 or newer), else why not."""
    try:
        with start_child([exe, "-hide_banner", "-h", "long"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, errors="replace") as proc:
            try:
                text, _ = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{exe} does not run ({exc.__class__.__name__})"
    if proc.returncode != 0:
        return f"{exe} does not run (exit {proc.returncode})"
    if "-fps_mode" not in text:
        return f"{exe} is too old (ffmpeg 5.1 or newer is needed)"
    return None


def _last_lines(text: str, n: int = 2) -> str:
    # ffmpeg's progress lines ("frame= ... size= ...") say nothing about what went wrong.
    lines = [ln.strip() for ln in text.strip().splitlines()
             if ln.strip() and not ln.lstrip().startswith(("frame=", "size="))]
    return " / ".join(lines[-n:]) or "no message"


def probe(exe: str, path: Path) -> VideoInfo:
    """Size, frame rate, exact frame count (demuxed, not decoded) and audio format, read from ffmpeg's report."""
    proc = run_child([exe, "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v:0", "-c", "copy",
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
        if count:
            channels = int(count.group(1))
        else:  # a named layout, or a custom one printed as its channels ("FL+FR+LFE")
            channels = LAYOUT_CHANNELS.get(layout) or (layout.count("+") + 1 if "+" in layout else 2)
    return VideoInfo(width, height, fps, frame_count, duration, sample_rate, channels)


def verify_video(exe: str, path: Path) -> None:
    """Raises MediaError unless every packet of every stream demuxes without error (-xerror makes any error fatal)."""
    proc = run_child([exe, "-hide_banner", "-nostdin", "-xerror", "-i", str(path), "-map", "0", "-c", "copy",
                      "-f", "null", "-"], text=True, errors="replace")
    if proc.returncode != 0 or not re.search(r"Stream #0:\d+.*?: Video: ", proc.stderr):
        raise MediaError(f"{Path(path).name} is not a whole video ({_last_lines(proc.stderr)})")


def _video_cmd(exe: str, path: Path, info: VideoInfo, plan: FramePlan, options: DecodeOptions) -> list[str]:
    # ffmpeg rotates upright by itself (autorotate), before these filters; a comma inside a filter's arguments
    # must be escaped in a filter graph string.
    filters = [name + "=" + args.replace(",", "\\,") for name, args in video_filters(info, plan, options)]
    cmd = [exe, "-v", "error", "-nostdin", "-i", str(path), "-map", "0:v:0"]
    if filters:
        cmd += ["-vf", ",".join(filters)]
    return cmd + ["-fps_mode", "passthrough", "-frames:v", str(plan.count), "-f", "rawvideo", "-pix_fmt", "rgb24",
                  "-"]


def decode_frames(exe: str, path: Path, info: VideoInfo, out: np.ndarray, options: DecodeOptions,
                  check: Callable[[], None], on_frames: Callable[[int, int], None]) -> int:
    """Decode into ``out``, which media.decode_frames checked: float32, the options' frame size, len(out) frames.
    ffmpeg decodes in its own process; a reader thread drains its pipe into a few small uint8 buffers, and this
    thread converts each into its slice of ``out`` while a third makes the pages of ``out`` present ahead of it.
    (Transparent huge pages were tried and dropped: on a VM their first touch stalled decodes up to 6x ffmpeg.)"""
    n, h, w, _ = out.shape
    frame_bytes = h * w * 3
    per_chunk = max(1, min(n, CHUNK_BYTES // frame_bytes))
    stop = threading.Event()
    free: queue.Queue = queue.Queue()
    filled: queue.Queue = queue.Queue()
    for _ in range(STAGING_BUFFERS):
        free.put(np.empty((per_chunk, h, w, 3), dtype=np.uint8))
    cmd = _video_cmd(exe, path, info, FramePlan(n, h, w), options)
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

        threads = [threading.Thread(target=drain, name="gmi-decode-read", daemon=True), start_prefault(out, stop)]
        threads[0].start()
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
                    np.multiply(buf[:whole], TO_FLOAT, out=out[done:done + whole])
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


def decode_audio(exe: str, path: Path, info: VideoInfo) -> np.ndarray:
    """The first audio track as [channels, samples] float32 in -1..1 at the file's rate (the clip has one)."""
    cmd = [exe, "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0", "-ac", str(info.channels),
           "-ar", str(info.sample_rate), "-f", "f32le", "-c:a", "pcm_f32le", "-"]
    proc = run_child(cmd)
    if proc.returncode != 0:
        raise MediaError(f"Could not decode the audio of {Path(path).name}: "
                         f"{_last_lines(proc.stderr.decode('utf-8', 'replace'))}")
    flat = np.frombuffer(proc.stdout, dtype="<f4")
    flat = flat[: len(flat) - len(flat) % info.channels]
    return flat.reshape(-1, info.channels).T.copy()  # interleaved -> planar
