"""Fetching a finished video from the media host: atomic (temp file, then rename), resumable, and without credentials.

The media host is not GMI's API: it never sees the API key.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import aiohttp

from .errors import DownloadError
from .net import Sleep, Timing, backoff_delay, check_url

log = logging.getLogger("gmi")

CHUNK = 1 << 20


async def fetch_video(session: aiohttp.ClientSession, url: str, dest: Path, *, request_id: str, timing: Timing,
                      sleep: Sleep, rng: random.Random,
                      on_progress: Callable[[int, int | None], None] | None = None) -> int:
    """Stream ``url`` into ``dest`` atomically (temp file, byte count checked, rename). No credentials are sent.
    A cut-off transfer resumes with a Range request where the server allows it. Returns the byte count."""
    check_url(url, "media URL")
    dest = Path(dest)
    await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.{os.getpid()}.{rng.randrange(1 << 30):x}.part")
    transfer = _Transfer(await asyncio.to_thread(open, part, "wb"))
    try:
        for attempt in range(timing.download_attempts):
            try:
                await _fetch_into(session, url, transfer, request_id, timing, on_progress)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                log.info("download of %s cut off at %d bytes (%s); retrying", request_id, transfer.written,
                         type(exc).__name__)
            if transfer.complete:
                break
            await sleep(backoff_delay(attempt, timing, None, rng))
        else:
            raise DownloadError(f"The video of request {request_id} could not be downloaded whole "
                                f"({transfer.written} of {transfer.total if transfer.total is not None else '?'} "
                                f"bytes after {timing.download_attempts} tries). Queue again to retry.")
        await asyncio.to_thread(_flush_and_sync, transfer.fh)
        transfer.fh.close()
        await asyncio.to_thread(os.replace, part, dest)
        return transfer.written
    finally:
        transfer.fh.close()
        await asyncio.to_thread(_unlink_quietly, part)


async def _fetch_into(session: aiohttp.ClientSession, url: str, transfer: "_Transfer", request_id: str,
                      timing: Timing, on_progress: Callable[[int, int | None], None] | None) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timing.download_read_timeout)
    headers = {"Range": f"bytes={transfer.written}-"} if transfer.written else {}
    # A plain request with no Authorization header: media hosts must never see the key.
    async with session.get(url, headers=headers, timeout=timeout, allow_redirects=True) as resp:
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
