"""The PyAV decoder: the ffmpeg binary's probe, check and decode, in this process, for a ComfyUI without an ffmpeg
binary (every ComfyUI ships PyAV).

Frames go through the filter chain the binary builds (upright rotation, select, scale, rgb24), in PyAV's own
libavfilter, so they come out as the binary's bytes. VideoFrame.to_ndarray(format="rgb24") alone matched them for 8-bit
video (BT.601/709/2020, limited or full range) but was off by up to 129 levels on 10-bit, where the conversion is not
the same swscale call; the graph matches both.
"""
from __future__ import annotations

import math
import threading
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import av
import numpy as np

from .errors import MediaError
from .media_plan import TO_FLOAT, DecodeOptions, FramePlan, VideoInfo, start_prefault, video_filters

PROGRESS_BYTES = 8 << 20  # report progress about as often as the binary's path does (one staging buffer)


def _open(path: Path, what: str):
    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(what.format(name=Path(path).name, why=_why(exc))) from None


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__


def _as_printed(rate: float) -> float:
    """The frame rate as ffmpeg prints it, and so as the binary's probe reads it (24000/1001 -> 23.98)."""
    hundredths = round(rate * 100)
    if not hundredths:
        return float(f"{rate:1.4f}")
    if hundredths % 100:
        return float(f"{rate:3.2f}")
    if hundredths % 100_000:
        return float(f"{rate:1.0f}")
    return float(f"{rate / 1000:1.0f}") * 1000


def _display_matrix(frame) -> list[int] | None:
    for data in frame.side_data:
        if getattr(data.type, "name", str(data.type)).upper().endswith("DISPLAYMATRIX"):
            return np.frombuffer(bytes(data), dtype=np.int32)[:9].tolist()
    return None


def _rotation(matrix: list[int] | None) -> float:
    """Degrees clockwise, as ffmpeg's get_rotation reads a display matrix (0 without one)."""
    if matrix is None:
        return 0.0
    scale0, scale1 = math.hypot(matrix[0], matrix[3]), math.hypot(matrix[1], matrix[4])
    if not scale0 or not scale1:
        return 0.0
    theta = float(round(math.degrees(math.atan2(matrix[1] / scale1, matrix[0] / scale0))))
    return theta - 360 * math.floor(theta / 360 + 0.9 / 360)


def upright_filters(matrix: list[int] | None) -> list[tuple[str, str]]:
    """The filters ffmpeg's autorotate inserts for this display matrix, in its order."""
    theta = _rotation(matrix)
    if abs(theta - 90) < 1:
        return [("transpose", "cclock_flip" if matrix[3] > 0 else "clock")]
    if abs(theta - 180) < 1:
        return [(name, "") for name, flipped in (("hflip", matrix[0] < 0), ("vflip", matrix[4] < 0)) if flipped]
    if abs(theta - 270) < 1:
        return [("transpose", "clock_flip" if matrix[3] < 0 else "cclock")]
    if abs(theta) > 1:
        return [("rotate", f"{theta:f}*PI/180")]
    return [("vflip", "")] if matrix is not None and matrix[4] < 0 else []


def _decoded(container, stream) -> Iterator:
    """Every frame of ``stream``; a damaged packet is skipped, as the binary skips it (and says so only at -v info)."""
    for packet in container.demux(stream):
        try:
            yield from stream.decode(packet)
        except av.error.InvalidDataError:
            continue


def probe(path: Path) -> VideoInfo:
    """The binary's probe, field for field: sizes upright, its printed frame rate, packets counted, not decoded."""
    with _open(path, "Not a readable video: {name} ({why})") as container:
        if not container.streams.video:
            raise MediaError(f"Not a readable video: {path.name} (it has no video stream)")
        video = container.streams.video[0]
        width, height = video.codec_context.width, video.codec_context.height
        rate = video.average_rate or video.base_rate
        fps = _as_printed(float(rate)) if rate else 0.0
        frame_count, first = 0, None
        try:
            for packet in container.demux(video):
                if not packet.size:
                    continue
                frame_count += 1
                if first is None:  # the rotation is on the frames: decode until the first one
                    try:
                        first = next(iter(video.decode(packet)), None)
                    except av.error.InvalidDataError:
                        pass
        except av.FFmpegError:
            pass  # a file cut short: the binary's probe also counts what came before the cut
        if first is not None and round(abs(_rotation(_display_matrix(first)))) % 180 == 90:
            width, height = height, width
        duration = 0.0
        if container.duration is not None:  # microseconds, shown to the hundredth as ffmpeg rounds it
            duration = (container.duration + 5000) // 10_000 / 100
        if fps <= 0 and duration > 0:
            fps = frame_count / duration
        if frame_count <= 0:
            raise MediaError(f"The video {path.name} has no frames.")
        sample_rate = channels = None
        if container.streams.audio and container.streams.audio[0].codec_context.sample_rate:
            audio = container.streams.audio[0].codec_context
            sample_rate, channels = audio.sample_rate, len(audio.layout.channels) or 2
    return VideoInfo(width, height, fps, frame_count, duration, sample_rate, channels)


def verify_video(path: Path) -> None:
    """Raises MediaError unless every packet of every stream demuxes whole and the index's count of each is there
    (a file cut short can end cleanly for the demuxer: its index says what is missing)."""
    name = Path(path).name
    with _open(path, "{name} is not a whole video ({why})") as container:
        if not container.streams.video:
            raise MediaError(f"{name} is not a whole video (it has no video stream)")
        seen: Counter = Counter()
        try:
            for packet in container.demux():
                if packet.is_corrupt:
                    raise MediaError(f"{name} is not a whole video (packet {seen[packet.stream.index] + 1} of "
                                     f"stream {packet.stream.index} is damaged or cut short)")
                if packet.size:
                    seen[packet.stream.index] += 1
        except av.FFmpegError as exc:
            raise MediaError(f"{name} is not a whole video ({_why(exc)})") from None
        for stream in container.streams:
            if stream.frames and seen[stream.index] < stream.frames:
                raise MediaError(f"{name} is not a whole video (stream {stream.index} ends after "
                                 f"{seen[stream.index]} of its {stream.frames} packets)")


def _graph(first, stream, filters: list[tuple[str, str]]):
    """buffer -> filters -> rgb24 -> sink, set up from the first frame as ffmpeg sets up its own."""
    graph = av.filter.Graph()
    chain = [graph.add("buffer", video_size=f"{first.width}x{first.height}", pix_fmt=first.format.name,
                       time_base=str(stream.time_base), pixel_aspect="1/1",
                       colorspace=str(int(first.colorspace)), range=str(int(first.color_range)))]
    for name, args in filters + [("format", "rgb24")]:
        chain.append(graph.add(name, args or None))
    chain.append(graph.add("buffersink"))
    for source, sink in zip(chain, chain[1:]):
        source.link_to(sink)
    graph.configure()
    return graph


def _pulled(graph) -> Iterator:
    while True:
        try:
            yield graph.pull()
        except (BlockingIOError, EOFError):  # av's EAGAIN (wants more input) and end of stream
            return


def _rgb_frames(container, stream, info: VideoInfo, plan: FramePlan, options: DecodeOptions) -> Iterator:
    graph = None
    for frame in _decoded(container, stream):
        if graph is None:
            graph = _graph(frame, stream, upright_filters(_display_matrix(frame)) +
                           video_filters(info, plan, options))
        graph.push(frame)
        yield from _pulled(graph)
    if graph is not None:
        graph.push(None)
        yield from _pulled(graph)


def decode_frames(path: Path, info: VideoInfo, out: np.ndarray, options: DecodeOptions,
                  check: Callable[[], None], on_frames: Callable[[int, int], None]) -> int:
    """Decode into ``out``, which media.decode_frames checked: float32, the options' frame size, len(out) frames.
    libav decodes on its own threads while this one converts; a second thread makes the pages of ``out`` present
    ahead of the converter, as on the binary's path."""
    n, h, w, _ = out.shape
    every = max(1, PROGRESS_BYTES // (h * w * 3))
    stop = threading.Event()
    toucher = start_prefault(out, stop)
    done = 0
    try:
        with _open(path, "Could not decode {name}: {why}") as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame and slice threads, as the binary decodes; one thread otherwise
            for frame in _rgb_frames(container, stream, info, FramePlan(n, h, w), options):
                check()
                np.multiply(frame.to_ndarray(), TO_FLOAT, out=out[done])
                done += 1
                if done == n or done % every == 0:
                    on_frames(done, n)
                if done == n:
                    break
    except av.FFmpegError as exc:
        raise MediaError(f"Could not decode {Path(path).name}: {_why(exc)}") from None
    finally:
        stop.set()
        toucher.join()
    return done


def _samples_before(end, frame) -> int:
    """How many samples of an audio frame play before ``end`` (seconds): the track's edit list ends it mid-frame,
    cutting the encoder's padding, and ffmpeg cuts there too."""
    if end is None or frame.pts is None or not frame.time_base:
        return frame.samples
    return max(0, min(frame.samples, round((end - frame.pts * frame.time_base) * frame.sample_rate)))


def decode_audio(path: Path, info: VideoInfo) -> np.ndarray:
    """The first audio track as [channels, samples] float32 at the file's rate, as the binary's ``-ac -ar f32le``
    gives it: the same resampler, and the track cut where its edit list ends it (AAC and MP3 pad their last frame)."""
    parts = []
    try:
        with _open(path, "Could not decode the audio of {name}: {why}") as container:
            stream = container.streams.audio[0]
            # "6c": the default layout for that many channels, which is what ffmpeg's -ac asks for.
            resampler = av.AudioResampler(format="fltp", layout=f"{info.channels}c", rate=info.sample_rate)
            end = None
            if stream.duration is not None and stream.time_base:
                end = ((stream.start_time or 0) + stream.duration) * stream.time_base
            for frame in _decoded(container, stream):
                parts += [part.to_ndarray() for part in resampler.resample(frame)]
                keep = _samples_before(end, frame)
                if keep < frame.samples and frame.sample_rate == info.sample_rate:
                    parts[-1] = parts[-1][:, :keep]  # same rate: the resampler gave this frame back whole
            parts += [part.to_ndarray() for part in resampler.resample(None)]
    except av.FFmpegError as exc:
        raise MediaError(f"Could not decode the audio of {Path(path).name}: {_why(exc)}") from None
    if not parts:
        return np.zeros((info.channels, 0), dtype=np.float32)
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False)
