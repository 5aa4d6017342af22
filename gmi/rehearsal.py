"""Rehearsal: a free, local stand-in for GMI's request queue.

It speaks the same API as GMI (submit, status, media), so a rehearsal goes through the same client, journal, download
and decode code as a paid run, and answers with a synthetic clip of exactly the size, frame rate, duration and audio
the real job would give: a test pattern with the prompt and take written on it (a storyboard: each shot on its own
colour, cut where the real shots would be, its label and prompt written on it), and a tone when sound is on. Made with
the ffmpeg binary, or with PyAV (no words on it) in a ComfyUI that has only PyAV.
"""
from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from aiohttp import web

from . import storyboard
from .client import QUEUE_PATH
from .errors import MediaError
from .media import Backend, decoder, run_child, start_child
from .models import CATALOGUE, ModelSpec
from .rehearsal_shots import shot_cards, shot_pictures, words_filter
from .rehearsal_stills import read_stills, still_pictures

log = logging.getLogger("gmi")

REHEARSAL_KEY = "free-stand-in-no-key-needed"  # shares no 8-character start with its ids (redaction)
TONE_HZ, TONE_RATE, TONE_LEVEL = 440, 48000, 0.125  # ffmpeg's sine source: 440 Hz at 1/8 of full scale


@dataclass(frozen=True)
class ClipShape:
    """What the real job would give: frame size, frame rate, seconds, and sound or none."""

    width: int
    height: int
    fps: float
    seconds: int
    sound: bool

    @classmethod
    def of(cls, spec: ModelSpec, payload: dict) -> "ClipShape":
        width, height = spec.frame_size(payload)  # the catalogue's one size rule (an image's aspect, for I2V)
        return cls(width, height, spec.fps, spec.seconds(payload), spec.has_sound(payload))

    @property
    def frames(self) -> int:
        return round(self.seconds * self.fps)


def render_clip(spec: ModelSpec, payload: dict, label: str, dest: Path) -> Path:
    """The clip the real job would give, written to ``dest``: same size, fps, duration, and sound or none. Made by
    the ffmpeg binary when there is one (the prompt and take written on it), else by PyAV (no words). Blocking."""
    payload, first, end = read_stills(payload)  # image to video: its first (and end) frame, from the wire
    shape = ClipShape.of(spec, payload)
    pictures, cards = _pictures(shape, payload, label, first, end)
    chosen = decoder()
    if chosen.backend is Backend.PYAV:
        return _render_with_pyav(shape, dest, pictures() if pictures is not None else None)
    if pictures is not None:
        return _render_pictures_with_ffmpeg(chosen.path, shape, pictures, dest, cards)
    return _render_with_ffmpeg(chosen.path, shape, f"REHEARSAL - {label}\n{payload.get('prompt', '')[:160]}", dest)


def _pictures(shape: ClipShape, payload: dict, label: str, first: np.ndarray | None, end: np.ndarray | None
              ) -> tuple[Callable[[], Iterator[np.ndarray]] | None, list[tuple[int, int, str]]]:
    """The pictures, when not the test pattern: a function that gives them afresh (the binary may need a second go,
    without words), and the words for each stretch of frames. Image to video: the stills. A storyboard: its shots,
    cut exactly where ``storyboard.spans`` puts them in a clip of this frame count and rate."""
    if first is not None:
        return (lambda: still_pictures(shape.width, shape.height, shape.frames, first, end)), []
    if payload.get("multi_prompt"):
        shots = storyboard.spans(payload["multi_prompt"], shape.frames, shape.fps)
        return ((lambda: shot_pictures(shape.width, shape.height, shape.fps, shots)),
                shot_cards(shots, label, shape.width, shape.height))
    return None, []


def _render_with_ffmpeg(exe: str, shape: ClipShape, words: str, dest: Path) -> Path:
    card = dest.with_suffix(".txt")
    card.write_text(words, encoding="utf-8")
    size = max(14, shape.height // 30)
    pattern = f"testsrc2=size={shape.width}x{shape.height}:rate={shape.fps:g}"
    text = (f",drawtext=textfile={card}:expansion=none:fontsize={size}:fontcolor=white:box=1:boxcolor=black@0.6"
            f":x=20:y=20:line_spacing=6")
    base = [exe, "-v", "error", "-y", "-nostdin", "-f", "lavfi", "-i"]
    sound_in, sound_out = _audio_args(shape)
    tail = [*sound_in, "-t", str(shape.seconds), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            *sound_out, "-movflags", "+faststart", str(dest)]
    try:
        run_child(base + [pattern + text] + tail, check=True)
    except subprocess.CalledProcessError:
        run_child(base + [pattern] + tail, check=True)  # no fonts here: no words
    finally:
        card.unlink(missing_ok=True)
    return dest


def _audio_args(shape: ClipShape) -> tuple[list[str], list[str]]:
    """ffmpeg's input and output arguments for the tone, when the clip has sound."""
    if not shape.sound:
        return [], []
    return ["-f", "lavfi", "-i", f"sine=frequency={TONE_HZ}:sample_rate={TONE_RATE}"], ["-c:a", "aac", "-ac", "2"]


def _render_pictures_with_ffmpeg(exe: str, shape: ClipShape, pictures: Callable[[], Iterator[np.ndarray]],
                                 dest: Path, cards: list[tuple[int, int, str]]) -> Path:
    """The pictures with ``cards``' words drawn on them (each on its own frames), or without where the binary can't
    draw words (no fonts)."""
    if cards:
        try:
            with tempfile.TemporaryDirectory(prefix="gmi-words-") as folder:
                words = words_filter(cards, Path(folder), shape.width, shape.height)
                return _encode_pictures(exe, shape, pictures(), dest, ("-vf", words), folder)
        except MediaError as error:
            log.info("rehearsal: the clip is made without words (%s)", error)
    return _encode_pictures(exe, shape, pictures(), dest)


def _encode_pictures(exe: str, shape: ClipShape, pictures: Iterator[np.ndarray], dest: Path,
                     filters: tuple[str, ...] = (), folder: str | None = None) -> Path:
    """yuv420p pictures piped into the binary's H.264 encoder, with the tone; atomic like the PyAV path. ``folder``:
    where ffmpeg runs (the words' files are there)."""
    sound_in, sound_out = _audio_args(shape)
    part = dest.resolve().with_name(dest.name + ".part")
    cmd = [exe, "-v", "error", "-y", "-nostdin", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s",
           f"{shape.width}x{shape.height}", "-r", f"{shape.fps:g}", "-i", "-", *sound_in, *filters,
           "-t", str(shape.seconds), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *sound_out,
           "-movflags", "+faststart", "-f", "mp4", str(part)]
    try:
        with start_child(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         cwd=folder) as proc:
            try:
                for picture in pictures:
                    proc.stdin.write(picture.tobytes())
                proc.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg stopped early: its message follows
            error = proc.stderr.read().decode(errors="replace")
            if proc.wait() != 0:
                raise MediaError(f"the rehearsal clip could not be made ({error.strip()[-200:]})")
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def _render_with_pyav(shape: ClipShape, dest: Path, pictures: Iterator[np.ndarray] | None = None) -> Path:
    """The same clip with PyAV's libav (H.264 yuv420p, AAC stereo tone), for a ComfyUI without an ffmpeg binary.
    Frame by frame, the tone keeping pace with the pictures: no more of the clip is in memory than a frame or two."""
    import av  # lazy: importing the pack stays cheap, and only a ComfyUI without the binary comes here

    for name in ("libx264", "aac") if shape.sound else ("libx264",):
        try:
            av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001 - unknown codec, or a PyAV built without it, fails in several ways
            raise MediaError(f"PyAV {av.__version__} here has no {name} encoder: install the pack's requirements "
                             f"(they bring an ffmpeg program) or turn rehearse off.") from None
    rate, samples = Fraction(shape.fps).limit_denominator(1001), shape.seconds * TONE_RATE
    part = dest.with_name(dest.name + ".part")  # the whole clip takes dest's name, or nothing does
    try:
        with av.open(str(part), "w", format="mp4", options={"movflags": "+faststart"}) as box:
            video = box.add_stream("libx264", rate=rate, options={"preset": "ultrafast"})
            video.width, video.height, video.pix_fmt = shape.width, shape.height, "yuv420p"
            video.thread_type = "AUTO"  # frame threads, as the binary encodes: PyAV's default (slices) is slower
            audio = box.add_stream("aac", rate=TONE_RATE, layout="stereo") if shape.sound else None
            heard = 0  # samples of tone encoded so far
            for index, picture in enumerate(pictures if pictures is not None else _pattern(shape)):
                frame = av.VideoFrame.from_ndarray(picture, format="yuv420p")
                frame.pts, frame.time_base = index, 1 / rate
                box.mux(video.encode(frame))
                last = index == shape.frames - 1
                until = samples if last else min(samples, round((index + 1) * TONE_RATE / rate))
                if audio is not None and until > heard:  # interleaved: the muxer never queues the whole track
                    sound = av.AudioFrame.from_ndarray(_tone(heard, until), format="fltp", layout="stereo")
                    sound.sample_rate, sound.pts, sound.time_base = TONE_RATE, heard, Fraction(1, TONE_RATE)
                    box.mux(audio.encode(sound))
                    heard = until
            box.mux(video.encode(None))
            if audio is not None:
                box.mux(audio.encode(None))
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def _pattern(shape: ClipShape) -> Iterator[np.ndarray]:
    """yuv420p pictures (luma rows, then the two quarter-size chroma planes): soft colour bands that drift, a bar that
    sweeps across once a second and a strip along the bottom that fills as the clip plays. One buffer, reused."""
    w, h = shape.width, shape.height
    picture = np.empty((h * 3 // 2, w), np.uint8)
    luma, chroma = picture[:h], picture[h:].reshape(2, h // 2, w // 2)
    ramp = np.linspace(32, 200, w).astype(np.uint8)
    wave = (128 + 56 * np.sin(np.arange(256) * (2 * np.pi / 256))).astype(np.uint8)  # one period, looked up
    across = np.add.outer(np.arange(h // 2), np.arange(w // 2)).astype(np.uint8)  # diagonal, wrapping every 256
    down = np.ascontiguousarray(across[:, ::-1])
    phase = np.empty_like(across)
    bar, strip = max(2, w // 32), max(2, h // 40)
    for index in range(shape.frames):
        luma[:] = ramp
        left = round(index / shape.fps % 1 * (w - bar))
        luma[:, left:left + bar] = 235
        luma[h - strip:, :round(w * (index + 1) / shape.frames)] = 235
        for plane, bands, speed in ((0, across, 3), (1, down, -5)):
            np.add(bands, np.uint8(index * speed % 256), out=phase)  # uint8 wraps: the bands cycle
            np.take(wave, phase, out=chroma[plane])
        yield picture


def _tone(start: int, end: int) -> np.ndarray:
    """Samples ``start`` to ``end`` of the sine, stereo, planar float: [2, end - start]."""
    wave = (TONE_LEVEL * np.sin(np.arange(start, end) * (2 * np.pi * TONE_HZ / TONE_RATE))).astype(np.float32)
    return np.vstack((wave, wave))


class RehearsalQueue:
    """``async with RehearsalQueue(label) as queue:`` then point a GMIClient at ``queue.base_url`` with any key.
    Lives on the current event loop, on 127.0.0.1, for one run. ``known(request_id)`` gives (model, payload) of a
    rehearsal an earlier run started (from the journal): a stopped rehearsal resumes instead of being 'not found'."""

    def __init__(self, label: str = "", known: Callable[[str], tuple[str, dict] | None] | None = None):
        self.label = label
        self.known = known
        self.jobs: dict[str, dict] = {}
        self.base_url = ""
        self._folder = Path(tempfile.mkdtemp(prefix="gmi-rehearsal-"))
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> "RehearsalQueue":
        app = web.Application(client_max_size=64 << 20)  # image to video: two Base64 stills of up to 10 MB
        app.router.add_post(QUEUE_PATH + "/requests", self._submit)
        app.router.add_get(QUEUE_PATH + "/requests/{rid}", self._status)
        app.router.add_get("/media/{rid}.mp4", self._media)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        for job in self.jobs.values():
            job["task"].cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        for path in self._folder.glob("*"):
            path.unlink(missing_ok=True)
        self._folder.rmdir()

    def _record(self, rid: str) -> dict:
        job = self.jobs[rid]
        task = job["task"]
        record = {"request_id": rid, "model": job["model"], "status": "processing", "outcome": None,
                  "payload": job["payload"], "rehearsal": True}
        if task.done():
            if task.cancelled() or task.exception() is not None:
                record.update(status="failed", error=f"rehearsal clip could not be made: {task.exception()}")
            else:
                record.update(status="success",
                              outcome={"media_urls": [{"id": "0", "url": f"{self.base_url}/media/{rid}.mp4"}]})
        return record

    async def _submit(self, request: web.Request) -> web.Response:
        body = await request.json()
        spec = CATALOGUE.get(body.get("model"))
        if spec is None:
            return web.json_response({"error": f"model {body.get('model')!r} not found"}, status=404)
        rid = "rehearsal-" + uuid.uuid4().hex[:16]
        self._start(rid, spec, body["payload"])
        log.info("rehearsal: %s stands in for a %s job (nothing is paid)", rid, spec.model_id)
        return web.json_response({**self._record(rid), "status": "queued"})

    def _start(self, rid: str, spec: ModelSpec, payload: dict) -> None:
        dest = self._folder / f"{rid}.mp4"
        task = asyncio.ensure_future(asyncio.to_thread(render_clip, spec, payload, self.label, dest))
        self.jobs[rid] = {"model": spec.model_id, "payload": payload, "task": task, "path": dest}

    async def _status(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        if rid not in self.jobs and self.known is not None:
            earlier = await asyncio.to_thread(self.known, rid)
            if earlier is not None and CATALOGUE.get(earlier[0]) is not None:
                self._start(rid, CATALOGUE[earlier[0]], earlier[1])  # an interrupted rehearsal, resumed
                log.info("rehearsal: %s resumed", rid)
        if rid not in self.jobs:
            return web.json_response({"error": "request not found"}, status=404)
        return web.json_response(self._record(rid))

    async def _media(self, request: web.Request) -> web.StreamResponse:
        job = self.jobs.get(request.match_info["rid"])
        if job is None or not job["task"].done() or not job["path"].is_file():
            return web.json_response({"error": "NoSuchKey"}, status=404)
        return web.FileResponse(job["path"])
