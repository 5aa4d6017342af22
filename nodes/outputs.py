"""The outputs every video node of the pack gives: the saved MP4 as VIDEO, decoded frames and audio, and facts."""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Awaitable, Callable

import torch
from comfy_api.latest import io

from ..gmi.errors import MediaError
from ..gmi.jobs import JobResult, JobRunner
from ..gmi.media import DecodedClip, DecodeOptions, decode_clip, plan_frames
from . import host
from .graph import linked_outputs

FRAMES, AUDIO = 1, 2  # output indices that cost decoding

# Jobs whose last run skipped decoding an unlinked output. Their cache key changes on the next queue, so a newly
# linked frames/audio consumer never receives the placeholder (re-running a saved job costs no request).
_partial_runs: dict[str, int] = {}


def fingerprint(job: str | None) -> str:
    """The node's cache key part for ``job`` (None: inputs are linked or invalid, ComfyUI's signature decides)."""
    if job is None:
        return f"partial:{sum(_partial_runs.values())}"
    return f"{job}:{_partial_runs.get(job, 0)}"


async def run_and_output(node: type, job: str, options: DecodeOptions,
                         start: Callable[[JobRunner], Awaitable[JobResult]],
                         rehearsal_label: str | None = None,
                         more: Callable[[int, float], tuple] | None = None) -> io.NodeOutput:
    """The shared body of the video nodes: run the job (Cancel-aware; against the free local stand-in when a
    rehearsal label is given), then build the outputs the graph uses; ``more(frame_count, fps)`` gives a node's own
    outputs after the shared ones."""
    reporter = host.Reporter(node.hidden.unique_id, rehearsal=rehearsal_label is not None)
    linked = linked_outputs(node.hidden.prompt, node.hidden.unique_id)
    try:
        async with host.open_runner(reporter, rehearsal_label) as runner:
            if linked is None or FRAMES in linked:
                runner.frames_options = options  # the memory for the frames is checked before paying
            result = await host.until_interrupted(start(runner), reporter)
        output = await node_output(result, linked, options, reporter, more)
    except host.Interrupted:
        raise
    except Exception as exc:  # the line under the node says what ended the run, not its last progress
        reporter.text(f"error: {exc}")
        raise
    if linked is not None and not {FRAMES, AUDIO} <= linked:
        _partial_runs[job] = _partial_runs.get(job, 0) + 1
    return output


def search_aliases(*words: str) -> dict:
    """Schema keywords for the node library's search, on hosts whose io.Schema has them (ComfyUI after 0.3.64)."""
    return {"search_aliases": list(words)} if "search_aliases" in getattr(io.Schema, "__dataclass_fields__", {}) else {}


def schema_outputs(request_id_output: str = "request_id") -> list:
    """The outputs, in their saved-workflow order. Ids must differ from the node's input ids (a node taking a
    ``request_id`` input names that output otherwise); the sockets show the display names."""
    return [
        io.Video.Output("video", display_name="video", tooltip="The downloaded MP4 as a video (file-backed, no re-encode)."),
        io.Image.Output("frames", display_name="frames",
                        tooltip="Every frame as an IMAGE batch [frames, height, width, 3], 0..1. Decoded only when linked."),
        io.Audio.Output("audio", display_name="audio",
                        tooltip="The soundtrack at the file's sample rate; silence of the clip's length when it has none."),
        io.Float.Output("fps", display_name="fps", tooltip="Frames per second of the video."),
        io.Int.Output("frame_count", display_name="frame_count", tooltip="Number of frames in the video."),
        io.String.Output(request_id_output, display_name="request_id",
                         tooltip="GMI's request id: collect the video again with it, or find it in GMI's console."),
        io.String.Output("path", display_name="path", tooltip="Where the MP4 was saved."),
    ]


def timeout_input() -> io.Int.Input:
    return io.Int.Input("timeout_minutes", default=30, min=1, max=1440, optional=True,
                        tooltip="Stop waiting after this long; the job is kept and a later queue collects it.")


def job_inputs() -> list:
    """The inputs after a paid node's own: the time limit, the decode options and the rehearsal switch."""
    return [timeout_input(), *decode_inputs(), rehearse_input()]


def rehearse_input() -> io.Boolean.Input:
    return io.Boolean.Input("rehearse", default=False, optional=True, label_on="rehearsal (free)",
                            label_off="real (paid)",
                            tooltip="Rehearsal: a free local stand-in returns a test clip of exactly the size, frame "
                                    "rate, length and sound the real job would give, so the rest of the graph can be "
                                    "built and checked without a key or spending.")


def decode_inputs() -> list:
    """Optional inputs that shape the decoded frames (the saved MP4 is always whole)."""
    return [
        io.Int.Input("max_frames", default=0, min=0, max=100000, optional=True,
                     tooltip="Decode at most this many frames (0 = all). Lowers memory for long clips."),
        io.Int.Input("every_nth", default=1, min=1, max=1000, optional=True,
                     tooltip="Keep every nth frame (1 = all): 2 halves the frame rate and the memory."),
        io.Int.Input("max_side", default=0, min=0, max=8192, optional=True,
                     tooltip="Scale frames so the longer side is at most this many pixels, in the decoder (0 = "
                             "native 720p). E.g. 640 quarters the memory before a heavy upscaler."),
    ]


async def decode(path: Path, need: set[int], options: DecodeOptions, reporter: host.Reporter) -> DecodedClip:
    """Frames straight into one preallocated float32 tensor, audio alongside; off the event loop, stoppable."""
    stopped = threading.Event()

    def check() -> None:
        if stopped.is_set():
            raise MediaError("decoding was stopped")
        host.check_interrupt()

    def alloc(shape) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.float32)

    try:
        return await asyncio.to_thread(decode_clip, path, frames=FRAMES in need, audio=AUDIO in need, options=options,
                                       alloc=alloc, check=check, on_frames=reporter.frames)
    except asyncio.CancelledError:
        stopped.set()  # the prompt is torn down: end ffmpeg at the next chunk
        raise
    except host.Interrupted:  # the line under the node says where things stand, not "decoding frames N of M"
        reporter.text(f"interrupted while decoding: the video is saved ({path.name}); queue again to decode it "
                      "(nothing new is paid).")
        raise


async def node_output(result: JobResult, linked: set[int] | None, options: DecodeOptions,
                      reporter: host.Reporter, more: Callable[[int, float], tuple] | None = None) -> io.NodeOutput:
    """All outputs for a saved video, decoding only what a linked output needs (everything when the graph is unknown)."""
    path = result.path
    need = {FRAMES, AUDIO} if linked is None else linked & {FRAMES, AUDIO}
    clip = await decode(path, need, options, reporter)
    info = clip.info
    # Not linked: a placeholder never seen downstream (the cache key changes before it could be).
    frames = clip.frames if clip.frames is not None else torch.zeros((1, 1, 1, 3), dtype=torch.float32)
    if clip.audio is not None:
        wave, rate = clip.audio
        audio = {"waveform": torch.from_numpy(wave).unsqueeze(0), "sample_rate": rate}
    else:
        audio = {"waveform": torch.zeros((1, 1, 1), dtype=torch.float32), "sample_rate": 44100}
    frame_count = int(frames.shape[0]) if clip.frames is not None else plan_frames(info, options).count
    fps = info.fps / options.every_nth
    reporter.text(f"done: {path.name}, {frame_count} frames at {fps:g} fps"
                  + (" (reused, nothing paid)" if result.reused else ""))
    extra = more(frame_count, fps) if more is not None else ()
    return io.NodeOutput(host.video_from_file(path), frames, audio, float(fps), frame_count, result.request_id,
                         str(path), *extra, ui=host.video_preview(path))
