"""A fake GMI request queue and media host on 127.0.0.1 (random ports), with scripted faults, and a fake clock."""
from __future__ import annotations

import asyncio
import base64
import math
import secrets
import struct
import time
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from aiohttp import web

QUEUE = "/api/v1/ie/requestqueue/apikey"


class FakeTime:
    """A clock and sleep where sleeping advances time at once: deadlines and backoffs cost no real time."""

    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        """Unix time that moves with the fake clock."""
        return 1_790_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


MODELS = {"kling-v3-text-to-video": {"prompt", "negative_prompt", "duration", "aspect_ratio", "sound"},
          "kling-v3-image-to-video": {"prompt", "image", "image_tail", "negative_prompt", "duration", "sound"},
          "kling-v3-omni": {"prompt", "negative_prompt", "mode", "aspect_ratio", "duration", "sound", "multi_shot",
                            "shot_type", "multi_prompt", "image_list"}}


def image_size(text: object) -> tuple[int, int] | None:
    """(width, height) of a Base64 PNG or JPEG, as GMI would read it; None when it is not one."""
    try:
        data = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
    except ValueError:
        return None
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:3] == b"\xff\xd8\xff":
        return (0, 0)  # a JPEG: accepted, its size not read
    return None


def check_payload(model: str, payload: object) -> str | None:
    """GMI's 400 text for a payload it would refuse, strictly: required keys, types, values, unknown keys."""
    if not isinstance(payload, dict):
        return "payload: must be an object"
    unknown = set(payload) - MODELS[model]
    if unknown:
        return f"payload: unknown key(s) {', '.join(sorted(unknown))}"
    if model == "kling-v3-omni" and payload.get("multi_shot") is True:
        return check_storyboard(payload)
    if not isinstance(payload.get("prompt"), str) or not payload["prompt"].strip():
        return "payload.prompt: required"
    if "duration" in payload and payload["duration"] not in [str(n) for n in range(3, 16)]:
        return "payload.duration: must be a string '3'..'15'"
    if "sound" in payload and payload["sound"] not in ("on", "off"):
        return "payload.sound: must be 'on' or 'off'"
    if "aspect_ratio" in payload and payload["aspect_ratio"] not in ("16:9", "9:16", "1:1"):
        return "payload.aspect_ratio: must be 16:9, 9:16 or 1:1"
    if model == "kling-v3-image-to-video":
        for key in ("image", "image_tail"):
            if (key == "image" or key in payload) and image_size(payload.get(key)) is None:
                return f"payload.{key}: must be a Base64 PNG or JPEG (no data: prefix)"
    return None


def check_storyboard(payload: dict) -> str | None:
    """Kling's rules for a customised multi-shot job, as GMI would enforce them."""
    shots = payload.get("multi_prompt")
    if payload.get("shot_type") != "customize":
        return "payload.shot_type: must be 'customize' with multi_prompt"
    if not isinstance(shots, list) or not 1 <= len(shots) <= 6:
        return "payload.multi_prompt: 1 to 6 shots"
    for n, shot in enumerate(shots, 1):
        if set(shot) != {"index", "prompt", "duration"} or shot["index"] != n:
            return f"payload.multi_prompt[{n - 1}]: needs index {n}, prompt and duration"
        if not isinstance(shot["prompt"], str) or not 0 < len(shot["prompt"]) <= 512:
            return f"payload.multi_prompt[{n - 1}].prompt: 1-512 characters"
        if not isinstance(shot["duration"], str) or not shot["duration"].isdigit() or int(shot["duration"]) < 1:
            return f"payload.multi_prompt[{n - 1}].duration: a string of whole seconds, at least '1'"
    if sum(int(s["duration"]) for s in shots) != int(payload.get("duration", "5")):
        return "payload.multi_prompt: the shots' durations must add up to duration"
    if payload.get("mode", "pro") not in ("std", "pro"):
        return "payload.mode: std or pro"
    for n, item in enumerate(payload.get("image_list", [])):
        if not isinstance(item, dict) or image_size(item.get("image_url")) is None:
            return f"payload.image_list[{n}].image_url: a Base64 PNG or JPEG"
    return None


def output_aspect(payload: dict) -> str:
    """The clip the fake answers with: the payload's aspect_ratio, or the one nearest the first image's."""
    if "aspect_ratio" in payload:
        return payload["aspect_ratio"]
    width, height = image_size(payload.get("image")) or (16, 9)
    if not width or not height:
        return "16:9"
    ratio = math.log(width / height)
    return min(("16:9", "9:16", "1:1"), key=lambda a: abs(math.log(int(a.split(":")[0]) / int(a.split(":")[1])) - ratio))


class FakeGMI:
    def __init__(self, clips: dict[tuple[str, bool], Path], wall=time.time):
        self.clips = clips
        self.wall = wall  # GMI's clock, for created_at
        self.key = "gmi-test-" + secrets.token_hex(20)
        self.jobs: dict[str, dict] = {}
        self.post_bodies: list[dict] = []            # every POST received, answered or not
        self.api_requests: list[tuple[str, str, dict]] = []
        self.media_requests: list[tuple[str, dict]] = []
        self.faults: dict[str, list] = defaultdict(list)  # "post" | "status" | "media" -> actions, used in order
        self.polls_until_done = 2       # status reads that answer queued/processing before the job ends
        self.final_status = "success"   # success | failed | cancelled
        self.failure_record: dict = {"error": "Content rejected by safety filter"}
        self.finish_on_post = False     # the POST answers with the finished job (seen live for some models)
        self.never_finish = False       # a job that sits queued forever
        self.outcome_extra: dict = {}
        self.status_hook = None         # async (request) -> response or None, consulted on every status read
        self.model_record: dict | None = None  # what GET /models/{id} answers; None = 404
        self.job_seconds: float | None = None  # if set, a job ends this long (by ``wall``) after its submit
        self.open_at_post: list[int] = []      # jobs submitted but not yet downloaded, seen at each POST
        self.refuse_prompts_with: str | None = None  # POSTs whose prompt contains this get GMI's 400
        self.listing = False            # whether GET /requests (known only from third-party clients) exists
        self.listing_page: int | None = None  # newest first, at most this many per answer (None: all, oldest first)
        self.listing_times = "seconds"  # created_at in the listing: "seconds" | "ms" | "iso"
        self.outcome_override: dict | None = None  # a success's outcome, as GMI might change its shape
        self.status_words: dict[str, str] = {}     # our status -> the word GMI answers with (e.g. "completed")
        self.next_ids: list[str] = []   # request ids to hand out before random ones (odd or hostile ids)

    # --- lifecycle --------------------------------------------------------------------------------------------

    async def start(self, api_port: int = 0, media_port: int = 0) -> None:
        api = web.Application(client_max_size=64 << 20)  # two Base64 images of up to 10 MB each
        api.router.add_post(QUEUE + "/requests", self._submit)
        api.router.add_get(QUEUE + "/requests/{rid}", self._status)
        api.router.add_get(QUEUE + "/requests", self._list)
        api.router.add_get(QUEUE + "/models/{model}", self._model)
        api.router.add_get(QUEUE + "/models", self._models)
        media = web.Application()
        media.router.add_get("/media/{name}", self._media)
        self._runners = []
        urls = []
        for app, port in ((api, api_port), (media, media_port)):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            urls.append(f"http://127.0.0.1:{port}")
            self._runners.append(runner)
        self.base_url, self.media_url = urls

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()

    # --- what tests read ----------------------------------------------------------------------------------------

    @property
    def created(self) -> list[str]:
        """Request ids of jobs that exist at GMI (and would be billed)."""
        return list(self.jobs)

    def status_reads(self) -> int:
        return sum(1 for method, path, _ in self.api_requests if method == "GET" and "/requests/" in path)

    # --- handlers ---------------------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.key}"

    async def _fault(self, route: str, request: web.Request, job: dict | None = None):
        if not self.faults[route]:
            return None
        action = self.faults[route].pop(0)
        if action == "reset":
            request.transport.abort()
            return web.Response(status=500)
        if action == "malformed":
            return web.Response(text="{not json", content_type="application/json")
        if isinstance(action, dict):
            return web.json_response(action.get("body", {"error": "fault"}), status=action["status"],
                                     headers=action.get("headers"))
        if callable(action):
            return await action(request)
        raise AssertionError(f"unknown fault {action!r}")

    def _record(self, job: dict) -> dict:
        record = {"request_id": job["rid"], "org_id": "org-test", "user_id": "user-test",
                  "model": job["model"], "status": self.status_words.get(job["status"], job["status"]), "is_public": False,
                  "payload": job["payload"] if job.get("echo", True) else None,
                  "outcome": None, "created_at": job["created_at"], "updated_at": job["created_at"] + 1,
                  "queued_at": job["created_at"]}
        if job["status"] == "success":
            aspect, sound = output_aspect(job["payload"]), job["payload"].get("sound", "on") == "on"
            media = job.setdefault("media", uuid.uuid4().hex)  # the media host's name for it, whatever the id
            record["outcome"] = {"thumbnail_image_url": f"{self.media_url}/media/{media}.jpg",
                                 "media_urls": [{"id": "0", "url": f"{self.media_url}/media/{media}.mp4"}],
                                 **self.outcome_extra}
            if self.outcome_override is not None:
                record["outcome"] = self.outcome_override
            job["clip"] = self.clips[(aspect, sound)]
        elif job["status"] in ("failed", "cancelled"):
            record.update(self.failure_record)
        return record

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        self.api_requests.append(("POST", request.path, dict(request.headers)))
        body = await request.json()
        self.post_bodies.append(body)
        fault = await self._fault("post", request)
        if fault is not None:
            return fault
        if not self._authorized(request):
            return web.json_response({"error": "Invalid API key"}, status=401)
        if self.refuse_prompts_with and self.refuse_prompts_with in str(body.get("payload", {}).get("prompt")):
            return web.json_response({"error": "payload.prompt: content refused by moderation"}, status=400)
        if body.get("model") not in MODELS:
            return web.json_response({"error": f"model {body.get('model')} not found"}, status=404)
        problem = check_payload(body["model"], body.get("payload"))
        if problem:
            return web.json_response({"error": problem}, status=400)
        fetched = {path.rsplit("/", 1)[1].split(".")[0] for path, _ in self.media_requests}
        self.open_at_post.append(1 + sum(1 for j in self.jobs.values() if j.get("media") not in fetched))
        rid = self.next_ids.pop(0) if self.next_ids else uuid.uuid4().hex
        job = {"rid": rid, "model": body["model"], "payload": body["payload"], "status": "queued", "reads": 0,
               "created_at": self.wall() if self.job_seconds is not None else int(self.wall())}
        self.jobs[rid] = job
        if self.faults["post_after_create"]:
            # The job exists (and is billed). "reset": its answer never reaches the client. {"wait": seconds, or an
            # asyncio.Event then "after" seconds more; "then": "answer" (late) or "cut" (lost after the wait)}.
            action = self.faults["post_after_create"].pop(0)
            if isinstance(action, dict):
                wait = action.get("wait", 0)
                if isinstance(wait, asyncio.Event):
                    await wait.wait()
                    wait = action.get("after", 0)
                await asyncio.sleep(wait)
            if not isinstance(action, dict) or action.get("then", "answer") == "cut":
                request.transport.abort()
                return web.Response(status=500)
        if self.finish_on_post and not self.never_finish:
            job["status"] = self.final_status
        return web.json_response(self._record(job))

    async def _status(self, request: web.Request) -> web.StreamResponse:
        self.api_requests.append(("GET", request.path, dict(request.headers)))
        fault = await self._fault("status", request)
        if fault is None and self.status_hook is not None:
            fault = await self.status_hook(request)
        if fault is not None:
            return fault
        if not self._authorized(request):
            return web.json_response({"error": "Invalid API key"}, status=401)
        job = self.jobs.get(request.match_info["rid"])
        if job is None:
            return web.json_response({"error": "request not found"}, status=404)
        job["reads"] += 1
        if self.job_seconds is not None and job["status"] not in ("success", "failed", "cancelled"):
            if self.wall() - job["created_at"] >= self.job_seconds:
                job["status"] = self.final_status
        elif job["status"] not in ("success", "failed", "cancelled") and not self.never_finish:
            if job["reads"] > self.polls_until_done:
                job["status"] = self.final_status
            elif job["reads"] > 1:
                job["status"] = "processing"
        return web.json_response(self._record(job))

    async def _models(self, request: web.Request) -> web.StreamResponse:
        self.api_requests.append(("GET", request.path, dict(request.headers)))
        if not self._authorized(request):
            return web.json_response({"error": "Invalid API key"}, status=401)
        return web.json_response({"model_ids": ["kling-v3-text-to-video"]})

    async def _model(self, request: web.Request) -> web.StreamResponse:
        self.api_requests.append(("GET", request.path, dict(request.headers)))
        if self.model_record is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(self.model_record)

    async def _list(self, request: web.Request) -> web.StreamResponse:
        self.api_requests.append(("GET", request.path, dict(request.headers)))
        if not self.listing:
            return web.json_response({"error": "not found"}, status=404)
        if not self._authorized(request):
            return web.json_response({"error": "Invalid API key"}, status=401)
        model = request.query.get("model_id")
        records = [self._record(job) for job in self.jobs.values() if model in (None, job["model"])]
        total = len(records)
        if self.listing_page is not None:
            records = sorted(records, key=lambda r: r["created_at"], reverse=True)[: self.listing_page]
        for record in records:
            if self.listing_times == "ms":
                record["created_at"] = int(record["created_at"] * 1000)
            elif self.listing_times == "iso":
                record["created_at"] = datetime.fromtimestamp(record["created_at"], timezone.utc).isoformat()
        return web.json_response({"requests": records, "total": total})

    def add_console_job(self, payload: dict, status: str = "success") -> str:
        """A job made outside the pack (e.g. in GMI's console); returns its request id."""
        rid = uuid.uuid4().hex
        self.jobs[rid] = {"rid": rid, "model": "kling-v3-text-to-video", "payload": payload, "status": status,
                          "reads": 0, "created_at": int(self.wall())}
        return rid

    async def _media(self, request: web.Request) -> web.StreamResponse:
        self.media_requests.append((request.path, dict(request.headers)))
        truncate = self.faults["media"] and self.faults["media"][0] == "truncate"
        if truncate:
            self.faults["media"].pop(0)
        else:
            fault = await self._fault("media", request)
            if fault is not None:
                return fault
        name = request.match_info["name"]
        job = next((j for j in self.jobs.values() if j.get("media") == name.rsplit(".", 1)[0]), None)
        if job is None or "clip" not in job or not name.endswith(".mp4"):
            return web.json_response({"error": "NoSuchKey"}, status=404)
        data = job["clip"].read_bytes()
        if truncate:
            # Announce the whole file, send half of it, then cut the connection.
            response = web.StreamResponse(headers={"Accept-Ranges": "bytes", "Content-Type": "video/mp4"})
            response.content_length = len(data)
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
            request.transport.close()  # close (not abort): what was written still reaches the client
            return response
        start = 0
        rng = request.headers.get("Range", "")
        if rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            return web.Response(body=data[start:], status=206, content_type="video/mp4",
                                headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}",
                                         "Accept-Ranges": "bytes"})
        return web.Response(body=data, content_type="video/mp4", headers={"Accept-Ranges": "bytes"})
