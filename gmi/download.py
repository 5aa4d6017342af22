"""Fetching a finished video from the media host: atomic (temp file, checked, then rename), resumable, bounded in time
and size, and without credentials.

The media host is not GMI's API: it never sees the API key. Every failure is a DownloadError that keeps the job:
it is paid and recorded, so queueing again retries the download without buying anything again.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import shutil
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable
from urllib.parse import urljoin

import aiohttp

from .errors import DownloadError, InputError
from .net import Clock, Sleep, Timing, backoff_delay, check_url

log = logging.getLogger("gmi")

CHUNK = 1 << 20
# A 15 s 1080p clip is tens of MB: 2 GiB is far above any real video, yet stops an endless body filling the disk.
MAX_VIDEO_BYTES = 2 << 30
MAX_REDIRECTS = 5
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# Never a video: a proxy's or captive portal's page, or a storage API's error object.
NOT_VIDEO_TYPES = re.compile(r"text/.*|application/json")
# Our temp files, ".<dest name>.<pid>.<hex>.part": the pid tells whether their writer still runs.
PART_NAME = re.compile(r"\..+\.(\d+)\.[0-9a-f]+\.part")

Progress = Callable[[int, int | None], None]


async def fetch_video(session: aiohttp.ClientSession, url: str, dest: Path, *, request_id: str, timing: Timing,
                      sleep: Sleep, rng: random.Random, clock: Clock = time.monotonic,
                      deadline: float | None = None, max_bytes: int = MAX_VIDEO_BYTES,
                      verify: Callable[[Path], None] | None = None, on_progress: Progress | None = None) -> int:
    """Stream ``url`` into ``dest`` atomically (temp file, byte count and ``verify`` checked, rename); no credentials.
    A cut-off transfer resumes with a Range request where the server allows it. Returns the byte count."""
    dest = Path(dest)
    await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(sweep_stale_parts, dest.parent)
    part = dest.with_name(f".{dest.name}.{os.getpid()}.{rng.randrange(1 << 30):x}.part")
    transfer = _Transfer(await asyncio.to_thread(open, part, "wb"), part, request_id, clock, deadline, max_bytes)
    try:
        for attempt in range(timing.download_attempts):
            transfer.check_time()
            try:
                await _fetch_into(session, url, transfer, timing, on_progress)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                log.info("download of %s cut off at %d bytes (%s); retrying", request_id, transfer.written,
                         type(exc).__name__)
            if transfer.complete:
                break
            await sleep(backoff_delay(attempt, timing, None, rng))
        else:
            total = transfer.total if transfer.total is not None else "?"
            raise _failed(request_id, f"could not be downloaded whole ({transfer.written} of {total} bytes after "
                                      f"{timing.download_attempts} tries)")
        await asyncio.to_thread(_flush_and_sync, transfer.fh)
        transfer.fh.close()
        if verify is not None:
            await _verify(verify, part, request_id)
        await asyncio.to_thread(os.replace, part, dest)
        return transfer.written
    finally:
        transfer.fh.close()
        await asyncio.to_thread(_unlink_quietly, part)


async def _fetch_into(session: aiohttp.ClientSession, url: str, transfer: "_Transfer", timing: Timing,
                      on_progress: Progress | None) -> None:
    """One attempt: append what the server sends to the temp file (from the start if it will not resume)."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timing.download_read_timeout)
    headers = {"Range": f"bytes={transfer.written}-"} if transfer.written else {}
    async with _follow_redirects(session, url, headers, timeout, transfer.request_id) as resp:
        _check_answer(resp, transfer.request_id)
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
        if transfer.total is not None:
            await transfer.check_room(transfer.total)
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
                transfer.check_time()  # per chunk: a body trickling a byte a second never trips the read timeout
                if transfer.written + len(pending) > transfer.max_bytes:
                    raise _failed(transfer.request_id, f"went past the {_size(transfer.max_bytes)} limit for one "
                                                       "video before it ended")
                if len(pending) >= CHUNK:
                    await flush()
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError):
            await flush()  # keep every byte that arrived: the retry resumes after them
            raise
        await flush()
        if transfer.total is None:
            transfer.total = transfer.written  # no length announced: the transfer ended cleanly, take what came


@asynccontextmanager
async def _follow_redirects(session: aiohttp.ClientSession, url: str, headers: dict, timeout: aiohttp.ClientTimeout,
                            request_id: str) -> AsyncIterator[aiohttp.ClientResponse]:
    """GET ``url``, following up to MAX_REDIRECTS redirects by hand: each hop's URL is checked before it is fetched."""
    for _ in range(MAX_REDIRECTS + 1):
        _check_hop(url, request_id)
        # A plain request with no Authorization header: media hosts must never see the key.
        async with session.get(url, headers=headers, timeout=timeout, allow_redirects=False) as resp:
            if resp.status not in REDIRECT_STATUSES:
                yield resp
                return
            location = resp.headers.get("Location")
            if not location:
                raise _failed(request_id, f"was redirected nowhere by the media host (HTTP {resp.status} with no "
                                          "Location)")
        url = urljoin(url, location)  # a relative Location is relative to the hop that sent it
    raise _failed(request_id, f"was redirected more than {MAX_REDIRECTS} times by the media host")


def _check_hop(url: str, request_id: str) -> None:
    """The network policy (gmi.net.check_url) for one URL, failing as a download error."""
    try:
        check_url(url, "media URL")
    except InputError:
        raise _failed(request_id, f"was sent to {url!r}, which is not https (plain http is allowed only to this "
                                  "machine)") from None


def _check_answer(resp: aiohttp.ClientResponse, request_id: str) -> None:
    """Refuse at once an answer that can never become the video; 5xx is raised as a retryable connection error."""
    if resp.status in (403, 404, 410):
        raise _failed(request_id, f"is gone from the media host (HTTP {resp.status}); the link may have expired")
    if resp.status >= 400:
        raise aiohttp.ClientConnectionError(f"media host answered HTTP {resp.status}")
    if NOT_VIDEO_TYPES.fullmatch(resp.content_type):
        raise _failed(request_id, f"came back as {resp.content_type}, not a video (a proxy or sign-in page?)")


async def _verify(verify: Callable[[Path], None], part: Path, request_id: str) -> None:
    """Run ``verify`` on the temp file off the event loop; any exception means the body is not the video."""
    try:
        await asyncio.to_thread(verify, part)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise _failed(request_id, f"could not be used: the media host sent something that is not a whole video "
                                  f"({detail})") from None


def sweep_stale_parts(folder: Path) -> None:
    """Remove temp files left in ``folder`` by processes that no longer run; files of live processes stay."""
    if os.name == "nt":
        return  # os.kill(pid, 0) on Windows terminates the process instead of probing it
    for path in folder.iterdir():
        match = PART_NAME.fullmatch(path.name)
        if match and not _pid_alive(int(match[1])):
            log.info("removing %s, left by a process that no longer runs", path.name)
            _unlink_quietly(path)


def _pid_alive(pid: int) -> bool:
    """False only when no process has ``pid``; another user's process, or a pid that cannot be probed, counts as live."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True
    return True


@dataclass
class _Transfer:
    """A download in progress: the open temporary file, bytes in it, bytes expected, and the limits it keeps to."""

    fh: Any
    part: Path
    request_id: str
    clock: Clock
    deadline: float | None
    max_bytes: int
    written: int = 0
    total: int | None = None

    @property
    def complete(self) -> bool:
        return self.total is not None and self.written == self.total

    def restart(self) -> None:
        self.fh.seek(0)
        self.fh.truncate()
        self.written = 0

    def check_time(self) -> None:
        if self.deadline is not None and self.clock() > self.deadline:
            raise _failed(self.request_id, f"took longer than the time limit to download ({self.written} bytes in)")

    async def check_room(self, total: int) -> None:
        """Refuse, before reading, a body larger than the cap or than the free space beside the temp file."""
        if total > self.max_bytes:
            raise _failed(self.request_id, f"is announced as {_size(total)}, over the {_size(self.max_bytes)} "
                                           "limit for one video")
        needed, folder = total - self.written, self.part.parent
        free = (await asyncio.to_thread(shutil.disk_usage, folder)).free
        if needed > free:
            raise _failed(self.request_id, f"needs {_size(needed)} of free space in {folder}, but only {_size(free)} "
                                           "is free there")


def _failed(request_id: str, what: str) -> DownloadError:
    """One line for the artist: which request, what happened, and that the paid job is safe."""
    return DownloadError(f"The video of request {request_id} {what}. The job is kept (nothing is bought again): "
                         "queue again to retry the download.")


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _flush_and_sync(fh) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
