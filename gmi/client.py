"""Async client for GMI's request queue: submit, status, download. Typed errors, bounded retries.

The API key goes only to the API host, in the Authorization header of API calls; media URLs never see it.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp

from .errors import (AuthError, DownloadError, GMIError, HTTPError, InputError, RateLimitedError,
                     SubmitUnknownError)
from .governor import Governor
from .keys import redact

log = logging.getLogger("gmi")

QUEUE_PATH = "/api/v1/ie/requestqueue/apikey"
TERMINAL = frozenset({"success", "failed", "cancelled"})
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")
CHUNK = 1 << 20

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True)
class Timing:
    """Every wait the client makes; tests shrink them to milliseconds."""

    submit_timeout: float = 180.0      # the POST can come back already finished, after tens of seconds
    status_timeout: float = 30.0
    download_read_timeout: float = 60.0
    backoff_base: float = 2.0
    backoff_cap: float = 60.0
    status_retries: int = 8             # consecutive failed status reads before giving up (deadline still applies)
    download_attempts: int = 4


@dataclass(frozen=True)
class RemoteJob:
    """A status record as GMI returned it (the POST answer has the same shape)."""

    request_id: str
    status: str
    outcome: dict | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def failure_reason(self) -> str:
        """GMI's own words for a failed or cancelled job, wherever the record keeps them."""
        for source in (self.raw, self.outcome or {}):
            for key in ("error", "reason", "message", "error_message", "detail", "failure_reason"):
                value = source.get(key)
                if isinstance(value, str) and value.strip():
                    return value.strip()
                if isinstance(value, dict):
                    inner = value.get("message") or value.get("error")
                    if isinstance(inner, str) and inner.strip():
                        return inner.strip()
        return "GMI gave no reason"


def parse_job(body: Any, *, request_id: str | None = None) -> RemoteJob:
    if not isinstance(body, dict):
        raise ValueError("status record is not a JSON object")
    rid = body.get("request_id") or body.get("id") or request_id
    status = body.get("status")
    if not isinstance(rid, str) or not rid:
        raise ValueError("status record has no request_id")
    if not isinstance(status, str):
        raise ValueError("status record has no status")
    outcome = body.get("outcome")
    return RemoteJob(request_id=rid, status=status.lower(), outcome=outcome if isinstance(outcome, dict) else None,
                     raw=body)


def pick_video_url(outcome: dict | None) -> str | None:
    """The video's URL from a success outcome: media_urls (objects or strings), else video_url; never the thumbnail."""
    if not outcome:
        return None
    thumb = outcome.get("thumbnail_image_url") or outcome.get("thumbnail_url")
    candidates: list[str] = []
    for item in outcome.get("media_urls") or []:
        url = item.get("url") if isinstance(item, dict) else item
        if isinstance(url, str) and url and url != thumb:
            candidates.append(url)
    video_url = outcome.get("video_url")
    if isinstance(video_url, str) and video_url:
        candidates.append(video_url)

    def suffix(url: str) -> str:
        return os.path.splitext(urlsplit(url).path)[1].lower()

    for url in candidates:
        if suffix(url) in VIDEO_SUFFIXES:
            return url
    return next((u for u in candidates if suffix(u) not in IMAGE_SUFFIXES), None)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> None:
    """https only; plain http only to a loopback address (that is how tests serve)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return
    raise InputError(f"{what}: {url!r} is not an https URL; only https is accepted (http only on this machine's loopback).")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def backoff_delay(attempt: int, timing: Timing, retry_after: float | None, rng: random.Random) -> float:
    """Exponential backoff with full jitter; Retry-After, when GMI sends one, is a floor."""
    delay = rng.uniform(0.5, 1.0) * min(timing.backoff_cap, timing.backoff_base * (2 ** attempt))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


class GMIClient:
    """One GMI request-queue client over one aiohttp session. Use ``async with GMIClient(...) as client``."""

    def __init__(self, base_url: str, api_key: str, *, timing: Timing = Timing(), sleep: Sleep = asyncio.sleep,
                 clock: Clock = time.monotonic, rng: random.Random | None = None, governor: Governor | None = None):
        base_url = base_url.rstrip("/")
        check_url(base_url, "GMI_BASE_URL")
        self.api_root = base_url + QUEUE_PATH
        self._key = api_key
        self.timing = timing
        self.sleep = sleep
        self.clock = clock
        self.rng = rng or random.Random()
        self.governor = governor
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "GMIClient":
        # trust_env=False: the key must not travel through a proxy picked up from the environment.
        self._session = aiohttp.ClientSession(trust_env=False, raise_for_status=False)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- API calls -------------------------------------------------------------------------------------------

    async def _turn(self) -> None:
        """Waits for this process's turn to ask GMI (the governor spaces all requests and pauses all on a 429)."""
        if self.governor is not None:
            await self.governor.pace(self.sleep)

    def _heard(self, status: int, retry_after: float | None = None) -> None:
        if self.governor is not None:
            if status == 429:
                self.governor.slow_down(retry_after)
            elif status < 400:
                self.governor.went_well()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}", "Accept": "application/json"}

    def _clean(self, text: str) -> str:
        return redact(text, self._key)

    async def _http_error(self, resp: aiohttp.ClientResponse, what: str, request_id: str | None) -> HTTPError:
        raw = await resp.text(errors="replace")
        try:
            body = json.loads(raw)
            text = body.get("error") or body.get("message") or body.get("detail") if isinstance(body, dict) else None
            text = text if isinstance(text, str) else raw
        except ValueError:
            text = raw
        text = self._clean(" ".join(text.split()))[:500] or resp.reason or "no text"
        rid = f" (request {request_id})" if request_id else ""
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        status = resp.status
        if status in (401, 403):
            return AuthError(f"GMI refused the API key for {what}: HTTP {status}: {text}{rid}. Check GMI_API_KEY "
                             "(or the key saved in the GMI Cloud settings) and that your account can use this model.",
                             status=status, gmi_text=text, request_id=request_id)
        if status in (429, 503):
            return RateLimitedError(f"GMI is busy ({what}): HTTP {status}: {text}{rid}. Try again in a few minutes.",
                                    status=status, gmi_text=text, request_id=request_id, retry_after=retry_after)
        return HTTPError(f"GMI {what} failed: HTTP {status}: {text}{rid}", status=status, gmi_text=text,
                         request_id=request_id, retry_after=retry_after)

    async def submit(self, model_id: str, payload: dict) -> RemoteJob:
        """One POST of the job. Raises RateLimitedError (429/503: nothing was created, retry later), HTTPError or
        AuthError (refused: nothing was created), GMIError (GMI unreachable: nothing was sent), or
        SubmitUnknownError (sent, answer lost: timeout, reset, other 5xx, unreadable body; a billed job may exist)."""
        assert self._session is not None, "use the client inside 'async with'"
        await self._turn()
        try:
            async with self._session.post(f"{self.api_root}/requests", json={"model": model_id, "payload": payload},
                                          headers=self._auth(),
                                          timeout=aiohttp.ClientTimeout(total=self.timing.submit_timeout)) as resp:
                if resp.status >= 400:
                    error = await self._http_error(resp, "submit", None)
                    self._heard(resp.status, error.retry_after)
                    if resp.status >= 500 and resp.status != 503:
                        raise SubmitUnknownError(
                            f"GMI answered the submit with HTTP {resp.status}: {error.gmi_text}. The job may "
                            "still have been created and billed")
                    raise error
                self._heard(resp.status)
                return parse_job(await resp.json(content_type=None))
        except aiohttp.ClientConnectorError as exc:
            raise GMIError(f"Could not reach GMI at {self.api_root.split('/api/')[0]} "
                           f"({self._clean(str(exc))[:200]}); nothing was submitted. Check the network and queue "
                           "again.") from None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise SubmitUnknownError(
                f"The answer to the submit was lost ({self._clean(type(exc).__name__ + ': ' + str(exc))[:200]}). "
                "The job may have been created and billed") from None

    async def check_key(self) -> None:
        """One cheap authenticated call (GET /models). Raises AuthError for a refused key, HTTPError otherwise."""
        assert self._session is not None, "use the client inside 'async with'"
        try:
            async with self._session.get(f"{self.api_root}/models", headers=self._auth(),
                                         timeout=aiohttp.ClientTimeout(total=self.timing.status_timeout)) as resp:
                if resp.status >= 400:
                    raise await self._http_error(resp, "key check", None)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise GMIError(f"Could not reach GMI at {self.api_root.split('/api/')[0]} "
                           f"({self._clean(str(exc))[:200]}).") from None

    async def _lookup(self, path: str, params: dict | None = None):
        """A GET that is only a hint (catalogue, listing): the JSON body on success, None on any failure."""
        assert self._session is not None, "use the client inside 'async with'"
        await self._turn()
        try:
            async with self._session.get(f"{self.api_root}{path}", params=params, headers=self._auth(),
                                         timeout=aiohttp.ClientTimeout(total=self.timing.status_timeout)) as resp:
                self._heard(resp.status, parse_retry_after(resp.headers.get("Retry-After")))
                return await resp.json(content_type=None) if resp.status < 400 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None

    async def model_info(self, model_id: str) -> dict | None:
        """GET /models/{id} (parameters and pricing), or None when it does not answer plainly."""
        body = await self._lookup(f"/models/{model_id}")
        return body if isinstance(body, dict) else None

    async def list_requests(self, model_id: str) -> list[RemoteJob] | None:
        """Recent jobs of this account for ``model_id`` (GET /requests, known only from third-party clients), or
        None when GMI does not offer the listing."""
        body = await self._lookup("/requests", {"model_id": model_id})
        items = body.get("requests") if isinstance(body, dict) else body
        if not isinstance(items, list):
            return None
        jobs = []
        for item in items:
            try:
                jobs.append(parse_job(item))
            except ValueError:
                continue
        return jobs

    async def status(self, request_id: str, *, deadline: float) -> RemoteJob:
        """Read one status record. Transient faults (429, 5xx, resets, bad JSON) are retried until ``deadline``."""
        assert self._session is not None, "use the client inside 'async with'"
        attempt = 0
        while True:
            retry_after = None
            await self._turn()
            try:
                async with self._session.get(f"{self.api_root}/requests/{request_id}", headers=self._auth(),
                                             timeout=aiohttp.ClientTimeout(total=self.timing.status_timeout)) as resp:
                    if resp.status < 400:
                        self._heard(resp.status)
                        return parse_job(await resp.json(content_type=None), request_id=request_id)
                    error = await self._http_error(resp, "status", request_id)
                    self._heard(resp.status, error.retry_after)
                    if resp.status < 500 and resp.status != 429:
                        raise error
                    retry_after = error.retry_after
                    failure: Exception = error
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                failure = exc
            delay = backoff_delay(attempt, self.timing, retry_after, self.rng)
            attempt += 1
            if attempt > self.timing.status_retries or self.clock() + delay > deadline:
                if isinstance(failure, GMIError):
                    raise failure
                raise GMIError(f"Could not read the status of request {request_id}: "
                               f"{self._clean(type(failure).__name__ + ': ' + str(failure))[:200]}. "
                               "Queue again to re-attach; nothing new will be billed.") from None
            log.info("GMI status %s: %s, retrying in %.1fs", request_id, type(failure).__name__, delay)
            await self.sleep(delay)

    # --- media -------------------------------------------------------------------------------------------------

    async def download(self, url: str, dest: Path, *, request_id: str,
                       on_progress: Callable[[int, int | None], None] | None = None) -> int:
        """Stream ``url`` into ``dest`` atomically (temp file, byte count checked, rename). No credentials are sent.
        A cut-off transfer resumes with a Range request where the server allows it. Returns the byte count."""
        assert self._session is not None, "use the client inside 'async with'"
        check_url(url, "media URL")
        dest = Path(dest)
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.{os.getpid()}.{self.rng.randrange(1 << 30):x}.part")
        transfer = _Transfer(await asyncio.to_thread(open, part, "wb"))
        try:
            for attempt in range(self.timing.download_attempts):
                try:
                    await self._fetch_into(url, transfer, request_id, on_progress)
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                    log.info("download of %s cut off at %d bytes (%s); retrying", request_id, transfer.written,
                             type(exc).__name__)
                if transfer.complete:
                    break
                await self.sleep(backoff_delay(attempt, self.timing, None, self.rng))
            else:
                raise DownloadError(f"The video of request {request_id} could not be downloaded whole "
                                    f"({transfer.written} of {transfer.total if transfer.total is not None else '?'} "
                                    f"bytes after {self.timing.download_attempts} tries). Queue again to retry.")
            await asyncio.to_thread(_flush_and_sync, transfer.fh)
            transfer.fh.close()
            await asyncio.to_thread(os.replace, part, dest)
            return transfer.written
        finally:
            transfer.fh.close()
            await asyncio.to_thread(_unlink_quietly, part)

    async def _fetch_into(self, url: str, transfer: "_Transfer", request_id: str,
                          on_progress: Callable[[int, int | None], None] | None) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=self.timing.download_read_timeout)
        headers = {"Range": f"bytes={transfer.written}-"} if transfer.written else {}
        # A plain request with no Authorization header: media hosts must never see the key.
        async with self._session.get(url, headers=headers, timeout=timeout, allow_redirects=True) as resp:
            if resp.status in (403, 404, 410):
                raise DownloadError(f"The video of request {request_id} is gone from the media host (HTTP "
                                    f"{resp.status}). It may have expired; collect the request again for a fresh link.")
            if resp.status >= 400:
                raise aiohttp.ClientConnectionError(f"media host answered HTTP {resp.status}")
            if resp.status == 206:
                crange = resp.headers.get("Content-Range", "")
                start = int(crange.split()[1].split("-")[0]) if crange.startswith("bytes ") else -1
                if start != transfer.written:
                    raise aiohttp.ClientConnectionError(f"media host resumed at the wrong place ({crange})")
                total = crange.rsplit("/", 1)[1]
                transfer.total = int(total) if total.isdigit() else transfer.total
            else:
                await asyncio.to_thread(transfer.restart)  # no resume offered: start over
                transfer.total = resp.content_length
            pending = bytearray()  # gathered to ~1 MiB per disk write; bounded whatever the file's size

            async def flush() -> None:
                await asyncio.to_thread(transfer.fh.write, bytes(pending))
                transfer.written += len(pending)
                pending.clear()
                if on_progress is not None:
                    on_progress(transfer.written, transfer.total)

            try:
                async for data in resp.content.iter_any():
                    pending += data
                    if len(pending) >= CHUNK:
                        await flush()
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError):
                await flush()  # keep every byte that arrived: the retry resumes after them
                raise
            await flush()
            if transfer.total is None:
                transfer.total = transfer.written  # no length announced: the transfer ended cleanly, take what came


@dataclass
class _Transfer:
    """A download in progress: the open temporary file, bytes in it, bytes expected."""

    fh: Any
    written: int = 0
    total: int | None = None

    @property
    def complete(self) -> bool:
        return self.total is not None and self.written == self.total

    def restart(self) -> None:
        self.fh.seek(0)
        self.fh.truncate()
        self.written = 0


def _flush_and_sync(fh) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
