"""MP4 -> frames and audio, with the ffmpeg binary that imageio-ffmpeg ships.

Frames stream from ffmpeg as rgb24 straight into slices of a caller-provided float32 array: ffmpeg decodes on one
core while Python converts on the other, and nothing the size of the clip is ever held twice.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import MediaError

SILENT_RATE = 44100
SILENT_CHANNELS = 2
CHUNK_BYTES = 24 << 20  # uint8 staging buffer between ffmpeg and the float tensor
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

    def tensor_bytes(self, frames: int | None = None) -> int:
        return (self.frame_count if frames is None else frames) * self.height * self.width * 3 * 4


def ffmpeg_exe() -> str:
    import imageio_ffmpeg  # lazy: importing the pack must stay cheap

    return imageio_ffmpeg.get_ffmpeg_exe()


def _last_lines(text: str, n: int = 2) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " / ".join(lines[-n:]) or "no message"


def probe(path: Path) -> VideoInfo:
    """Size, frame rate, exact frame count (demuxed, not decoded) and audio format of the first streams."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"Video file not found: {path}")
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v:0", "-c", "copy",
                           "-f", "null", "-"], capture_output=True, text=True, errors="replace")
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


def decode_frames(path: Path, info: VideoInfo, out: np.ndarray, *, check: Callable[[], None] = lambda: None,
                  on_frames: Callable[[int, int], None] = lambda done, total: None) -> int:
    """Decode the video into ``out`` ([N, H, W, 3] float32, 0..1; N >= frames wanted). Returns the frames written.
    ``check`` is called between chunks and may raise to stop (the ffmpeg process is then ended)."""
    n, h, w, c = out.shape
    if (h, w, c) != (info.height, info.width, 3) or out.dtype != np.float32:
        raise ValueError(f"out must be [N, {info.height}, {info.width}, 3] float32, got {out.shape} {out.dtype}")
    frame_bytes = h * w * 3
    per_chunk = max(1, min(n, CHUNK_BYTES // frame_bytes))
    staging = np.empty((per_chunk, h, w, 3), dtype=np.uint8)
    view = memoryview(staging).cast("B")
    scale = np.float32(1.0 / 255.0)
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough",
           "-frames:v", str(n), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errfile, bufsize=0)
        done = 0
        try:
            while done < n:
                check()
                want = min(per_chunk, n - done)
                got = _read_full(proc.stdout, view[: want * frame_bytes])
                whole = got // frame_bytes
                if whole:
                    np.multiply(staging[:whole], scale, out=out[done:done + whole])
                    done += whole
                    on_frames(done, n)
                if got < want * frame_bytes:
                    break
        finally:
            if proc.poll() is None and done < n:
                proc.kill()
            proc.stdout.close()
            code = proc.wait()
        if done < n and code != 0:
            errfile.seek(0)
            message = errfile.read().decode("utf-8", "replace")
            raise MediaError(f"Could not decode {Path(path).name}: {_last_lines(message)}")
    if done == 0:
        raise MediaError(f"Could not decode {Path(path).name}: no frames came out.")
    return done


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
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise MediaError(f"Could not decode the audio of {Path(path).name}: "
                         f"{_last_lines(proc.stderr.decode('utf-8', 'replace'))}")
    flat = np.frombuffer(proc.stdout, dtype="<f4")
    flat = flat[: len(flat) - len(flat) % info.channels]
    wave = flat.reshape(-1, info.channels).T.copy()  # interleaved -> planar
    np.clip(wave, -1.0, 1.0, out=wave)
    return wave, info.sample_rate
