"""Async client for GMI's request queue: submit, status, listing; the download is in gmi.download. Typed errors, bounded retries.

The API key goes only to the API host, in the Authorization header of API calls; media URLs never see it.
"""
from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlsplit

import aiohttp

from .download import fetch_video
from .errors import AuthError, GMIError, HTTPError, InputError, RateLimitedError, SubmitUnknownError
from .governor import Governor
from .keys import redact
# Re-exported: callers import the network policy from the client they use it with.
from .net import Clock, Sleep, Timing, backoff_delay, check_url, is_loopback_host, parse_retry_after  # noqa: F401

log = logging.getLogger("gmi")

QUEUE_PATH = "/api/v1/ie/requestqueue/apikey"
TERMINAL = frozenset({"success", "failed", "cancelled"})
RUNNING = frozenset({"created", "queued", "dispatched", "processing"})
# Words a changed or older API might use for the same states (seen in other GMI models and queue APIs).
SYNONYMS = {**dict.fromkeys(("succeeded", "successful", "completed", "complete", "done", "finished"), "success"),
            **dict.fromkeys(("failure", "error", "errored"), "failed"),
            **dict.fromkeys(("canceled", "aborted"), "cancelled"),
            **dict.fromkeys(("pending", "waiting", "submitted", "scheduled"), "queued"),
            **dict.fromkeys(("running", "in_progress", "in-progress", "started", "generating"), "processing")}
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")


@dataclass(frozen=True)
class Listing:
    """One answer of GET /requests: the records it held, the ``total`` it claimed, records it could not read."""

    jobs: list
    total: int | None = None
    unreadable: int = 0


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

    @property
    def known(self) -> bool:
        """False for a status word the pack cannot place (a changed API): running or done cannot be told."""
        return self.status in TERMINAL or self.status in RUNNING

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
    word = status.strip().lower()
    return RemoteJob(request_id=rid, status=SYNONYMS.get(word, word),
                     outcome=outcome if isinstance(outcome, dict) else None, raw=body)


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
    named = next((u for u in candidates if suffix(u) not in IMAGE_SUFFIXES), None)
    if named is not None:
        return named
    # A shape we do not know (the API changed): a URL that names a video file, under any key, is the video.
    return next((u for u in _strings(outcome) if u.startswith(("https://", "http://")) and u != thumb
                 and suffix(u) in VIDEO_SUFFIXES), None)


def _strings(value: Any, depth: int = 0):
    """Every string inside a JSON value, depth-first (bounded: the value is GMI's)."""
    if isinstance(value, str):
        yield value
    elif depth < 8 and isinstance(value, dict):
        for item in value.values():
            yield from _strings(item, depth + 1)
    elif depth < 8 and isinstance(value, list):
        for item in value:
            yield from _strings(item, depth + 1)


class GMIClient:
    """One GMI request-queue client over one aiohttp session. Use ``async with GMIClient(...) as client``."""

    def __init__(self, base_url: str, api_key: str, *, timing: Timing = Timing(), sleep: Sleep = asyncio.sleep,
                 clock: Clock = time.monotonic, rng: random.Random | None = None, governor: Governor | None = None):
        base_url = base_url.rstrip("/")
        check_url(base_url, "GMI_BASE_URL")
        if not api_key or any(ch.isspace() or not ch.isprintable() for ch in api_key):
            # It could not go in a header: say so now, before a POST that would fail with the outcome unknown.
            raise InputError("The GMI API key contains a line break, a space or an invisible character, so it cannot "
                             "be sent; copy it again from GMI Cloud's console. Nothing was submitted.")
        self.api_root = base_url + QUEUE_PATH
        self._key = api_key
        self.timing = timing
        self.sleep = sleep
        self.clock = clock
        self.rng = rng or random.Random()
        self.governor = governor
        self.on_wait: Callable[[str], None] | None = None  # told, in a line, why a read is waiting
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

    async def turn(self) -> None:
        """Waits for this process's turn to ask GMI (the governor spaces all requests and pauses all on a 429). The
        submit waits here before its job is recorded: a Cancel during the wait pays nothing, and the time recorded
        is when the POST leaves (the window a lost answer is searched in)."""
        if self.governor is not None:
            await self.governor.pace(self.sleep, self._held)

    def twin(self) -> "GMIClient":
        """The same client for another event loop (a session of its own, made on entering ``async with``): the POST
        runs on a worker thread that the prompt's loop cannot cancel."""
        twin = copy.copy(self)
        twin._session, twin.on_wait, twin.sleep = None, None, asyncio.sleep
        return twin

    def _held(self, seconds: float) -> None:
        """The governor holds this request for GMI's rate limit (a 429 seen by any job of this process): say so."""
        if self.on_wait is not None:
            self.on_wait(f"rate-limited by GMI, waiting {seconds:.1f} s" if seconds < 10 else
                         f"rate-limited by GMI, waiting {seconds:.0f} s")

    def _heard(self, status: int, retry_after: float | None = None) -> None:
        if self.governor is not None:
            if status == 429:
                self.governor.slow_down(retry_after)
            elif status < 400:
                self.governor.went_well()

    def _say_waiting(self, failure: BaseException, delay: float) -> None:
        """Tells the user why nothing moves (a wait is never silent), through ``on_wait`` when a caller set one."""
        if self.on_wait is None:
            return
        wait = f"{delay:.1f}" if delay < 10 else f"{delay:.0f}"
        if isinstance(failure, RateLimitedError) and failure.status == 429:
            self.on_wait(f"rate-limited by GMI, waiting {wait} s")
        elif isinstance(failure, HTTPError):
            self.on_wait(f"GMI answered HTTP {failure.status}; trying again in {wait} s")
        else:
            self.on_wait(f"GMI cannot be reached ({type(failure).__name__}); trying again in {wait} s")

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}", "Accept": "application/json"}

    def _clean(self, text: str) -> str:
        return redact(text, self._key)

    async def _json(self, resp: aiohttp.ClientResponse) -> Any:
        """The body as JSON, redacted first: whatever GMI writes (a reason, an outcome) may echo the key, and it goes
        on to the screen, the log and the journal."""
        return json.loads(self._clean(await resp.text(errors="replace")))

    def _requests_url(self, request_id: str) -> str:
        # An id is one path segment, whatever it holds ('/', '..', '?'): it must never steer the authenticated GET.
        return f"{self.api_root}/requests/{quote(request_id, safe='')}"

    async def _http_error(self, resp: aiohttp.ClientResponse, what: str, request_id: str | None) -> HTTPError:
        raw = await resp.text(errors="replace")
        try:
            body = json.loads(raw)
            text = body.get("error") or body.get("message") or body.get("detail") if isinstance(body, dict) else None
            text = text if isinstance(text, str) else raw
        except ValueError:
            body, text = None, raw
        text = self._clean(" ".join(text.split()))[:500] or resp.reason or "no text"
        rid = f" (request {request_id})" if request_id else ""
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        status = resp.status
        if status in (401, 403):
            return AuthError(f"GMI refused the API key for {what}: HTTP {status}: {text}{rid}. Check GMI_API_KEY "
                             "(or the key saved in the GMI Cloud settings) and that your account can use this model.",
                             status=status, gmi_text=text, request_id=request_id)
        # A 503 is GMI's "capacity exhausted" (nothing made) only in GMI's own words ({"error": ...}); a gateway's
        # page may stand in front of a backend that made the job.
        if status == 429 or (status == 503 and isinstance(body, dict) and isinstance(body.get("error"), str)):
            return RateLimitedError(f"GMI is busy ({what}): HTTP {status}: {text}{rid}. Try again in a few minutes.",
                                    status=status, gmi_text=text, request_id=request_id, retry_after=retry_after)
        return HTTPError(f"GMI {what} failed: HTTP {status}: {text}{rid}", status=status, gmi_text=text,
                         request_id=request_id, retry_after=retry_after)

    async def submit(self, model_id: str, payload: dict, *, paced: bool = False) -> RemoteJob:
        """One POST of the job (``paced``: the caller already waited for its turn). Raises RateLimitedError (429, or
        503 in GMI's own words: nothing was created, retry later), HTTPError or AuthError (refused: nothing was
        created), GMIError (GMI unreachable: nothing was sent), or SubmitUnknownError (sent, answer lost: timeout,
        reset, other 5xx, unreadable body; a billed job may exist)."""
        assert self._session is not None, "use the client inside 'async with'"
        if not paced:
            await self.turn()
        try:
            async with self._session.post(f"{self.api_root}/requests", json={"model": model_id, "payload": payload},
                                          headers=self._auth(), allow_redirects=False,
                                          timeout=aiohttp.ClientTimeout(total=self.timing.submit_timeout)) as resp:
                if 300 <= resp.status < 400:
                    # Following would re-send the prompt (and the key) elsewhere and adopt a stranger's id.
                    raise HTTPError(f"GMI's address answered the submit with a redirect (HTTP {resp.status} to "
                                    f"{resp.headers.get('Location', '?')[:120]}), which the pack does not follow; "
                                    "nothing was submitted. Check GMI_BASE_URL.", status=resp.status)
                if resp.status >= 400:
                    error = await self._http_error(resp, "submit", None)
                    self._heard(resp.status, error.retry_after)
                    if resp.status >= 500 and not isinstance(error, RateLimitedError):
                        raise SubmitUnknownError(
                            f"GMI answered the submit with HTTP {resp.status}: {error.gmi_text}. The job may "
                            "still have been created and billed")
                    raise error
                self._heard(resp.status)
                return parse_job(await self._json(resp))
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
            async with self._session.get(f"{self.api_root}/models", headers=self._auth(), allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=self.timing.status_timeout)) as resp:
                if resp.status >= 400:
                    raise await self._http_error(resp, "key check", None)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise GMIError(f"Could not reach GMI at {self.api_root.split('/api/')[0]} "
                           f"({self._clean(str(exc))[:200]}).") from None

    async def _lookup(self, path: str, params: dict | None = None):
        """A GET that is only a hint (catalogue, listing): the JSON body on success, None on any failure."""
        assert self._session is not None, "use the client inside 'async with'"
        await self.turn()
        try:
            async with self._session.get(f"{self.api_root}{path}", params=params, headers=self._auth(),
                                         allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=self.timing.status_timeout)) as resp:
                self._heard(resp.status, parse_retry_after(resp.headers.get("Retry-After")))
                return await self._json(resp) if resp.status < 300 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None

    async def model_info(self, model_id: str) -> dict | None:
        """GET /models/{id} (parameters and pricing), or None when it does not answer plainly."""
        body = await self._lookup(f"/models/{quote(model_id, safe='')}")
        return body if isinstance(body, dict) else None

    async def list_requests(self, model_id: str) -> Listing | None:
        """Recent jobs of this account for ``model_id`` (GET /requests, known only from third-party clients), or
        None when GMI does not offer the listing."""
        body = await self._lookup("/requests", {"model_id": model_id})
        items = body.get("requests") if isinstance(body, dict) else body
        if not isinstance(items, list):
            return None
        jobs, unreadable = [], 0
        for item in items:
            try:
                jobs.append(parse_job(item))
            except ValueError:
                unreadable += 1
        total = body.get("total") if isinstance(body, dict) else None
        return Listing(jobs, total if isinstance(total, int) and not isinstance(total, bool) else None, unreadable)

    async def status(self, request_id: str, *, deadline: float) -> RemoteJob:
        """Read one status record. Transient faults (429, 5xx, resets, bad JSON) are retried until ``deadline``."""
        assert self._session is not None, "use the client inside 'async with'"
        attempt = 0
        while True:
            retry_after = None
            await self.turn()
            try:
                async with self._session.get(self._requests_url(request_id), headers=self._auth(),
                                             allow_redirects=False,
                                             timeout=aiohttp.ClientTimeout(total=self.timing.status_timeout)) as resp:
                    if resp.status < 300:
                        self._heard(resp.status)
                        return parse_job(await self._json(resp), request_id=request_id)
                    error = await self._http_error(resp, "status", request_id)
                    self._heard(resp.status, error.retry_after)
                    if resp.status < 500 and resp.status != 429:
                        raise error
                    retry_after = error.retry_after
                    failure: Exception = error
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                failure = exc
            # On a 429 the governor holds every request for GMI's Retry-After: a wait here would double it, and a
            # rate limit is no fault of this read (the deadline bounds it, not the retry count).
            governed = self.governor is not None and isinstance(failure, RateLimitedError) and failure.status == 429
            delay = self.governor.pause_left() if governed else backoff_delay(attempt, self.timing, retry_after,
                                                                                self.rng)
            attempt += 0 if governed else 1
            if attempt > self.timing.status_retries or self.clock() + delay > deadline:
                if isinstance(failure, GMIError):
                    raise failure
                raise GMIError(f"Could not read the status of request {request_id}: "
                               f"{self._clean(type(failure).__name__ + ': ' + str(failure))[:200]}. "
                               "The job is kept: run it again (queue the same inputs, or the same command) to "
                               "re-attach; nothing new is billed.") from None
            log.info("GMI status %s: %s, retrying in %.1fs", request_id, type(failure).__name__, delay)
            if not governed:  # else the governor's pause holds the next read, and _held says so
                self._say_waiting(failure, delay)
                await self.sleep(delay)

    # --- media -------------------------------------------------------------------------------------------------

    async def download(self, url: str, dest: Path, *, request_id: str, deadline: float | None = None,
                       verify: Callable[[Path], None] | None = None,
                       on_progress: Callable[[int, int | None], None] | None = None) -> int:
        """Stream ``url`` into ``dest`` atomically, without credentials, by ``deadline`` (this client's clock), and
        ``verify`` the file before it takes its name (see gmi.download)."""
        assert self._session is not None, "use the client inside 'async with'"
        return await fetch_video(self._session, url, dest, request_id=request_id, timing=self.timing,
                                 sleep=self.sleep, rng=self.rng, clock=self.clock, deadline=deadline, verify=verify,
                                 on_progress=on_progress)
