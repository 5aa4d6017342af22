"""Rehearsal: a free, local stand-in for GMI's request queue.

It speaks the same API as GMI (submit, status, media), so a rehearsal goes through the same client, journal, download
and decode code as a paid run, and answers with a synthetic clip of exactly the size, frame rate, duration and audio
the real job would give: a test pattern with the prompt and take written on it, and a tone when sound is on.
"""
from __future__ import annotations

import asyncio
import logging
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Callable

from aiohttp import web

from .client import QUEUE_PATH
from .media import ffmpeg_exe, run_child
from .models import CATALOGUE, ModelSpec

log = logging.getLogger("gmi")

REHEARSAL_KEY = "free-stand-in-no-key-needed"  # shares no 8-character start with its ids (redaction)


def render_clip(spec: ModelSpec, payload: dict, label: str, dest: Path) -> Path:
    """The clip the real job would give, made with ffmpeg: same size, fps, duration, and sound or none."""
    width, height = spec.frame_sizes[payload.get("aspect_ratio", "16:9")]
    seconds = spec.seconds(payload)
    card = dest.with_suffix(".txt")
    card.write_text(f"REHEARSAL - {label}\n{payload.get('prompt', '')[:160]}", encoding="utf-8")
    size = max(14, height // 30)
    pattern = f"testsrc2=size={width}x{height}:rate={spec.fps:g}"
    text = (f",drawtext=textfile={card}:expansion=none:fontsize={size}:fontcolor=white:box=1:boxcolor=black@0.6"
            f":x=20:y=20:line_spacing=6")
    base = [ffmpeg_exe(), "-v", "error", "-y", "-nostdin", "-f", "lavfi", "-i"]
    tail = ["-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if spec.has_sound(payload):
        tail = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"] + tail + ["-c:a", "aac", "-ac", "2"]
    tail += ["-movflags", "+faststart", str(dest)]
    try:
        run_child(base + [pattern + text] + tail, check=True)
    except subprocess.CalledProcessError:
        run_child(base + [pattern] + tail, check=True)  # no fonts here: no words
    finally:
        card.unlink(missing_ok=True)
    return dest


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
        app = web.Application()
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
