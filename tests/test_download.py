"""Fetching a finished video from a media host of our own on loopback: what may take the final name, where redirects
may lead, how long and how large a download may get, and what is left behind."""
from __future__ import annotations

import asyncio
import itertools
import os
import random
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gmi_video_pack.gmi.download import fetch_video
from gmi_video_pack.gmi.errors import DownloadError
from gmi_video_pack.gmi.media import verify_video
from gmi_video_pack.gmi.net import Timing

RID = "rq-7f3a-download"
TIMING = Timing(download_read_timeout=10)
GUARD = 20  # seconds: a test that hangs fails instead (a passing run takes a fraction of a second)


class MediaHost:
    """An aiohttp media host on 127.0.0.1 (random port) serving the handlers a test gives; it records each path asked."""

    def __init__(self):
        self.paths: list[str] = []
        self._runner: web.AppRunner | None = None

    async def start(self, routes: dict) -> str:
        @web.middleware
        async def record(request, handler):
            self.paths.append(request.path)
            return await handler(request)

        app = web.Application(middlewares=[record])
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def host():
    server = MediaHost()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def clip(clips) -> bytes:
    return clips[("16:9", True)].read_bytes()


def video(data: bytes):
    async def handler(request):
        return web.Response(body=data, content_type="video/mp4")
    return handler


def redirect(location: str, *, absolute: bool = False):
    async def handler(request):
        to = str(request.url.join(URL(location))) if absolute else location
        return web.Response(status=302, headers={"Location": to})
    return handler


def endless(block: bytes):
    """A video/mp4 body without a length that never ends: ``block`` again and again until the client hangs up."""
    async def handler(request):
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        await response.prepare(request)
        try:
            while True:
                await response.write(block)
                await asyncio.sleep(0)  # let the client run; no real waiting
        except (ConnectionError, RuntimeError):
            pass
        return response
    return handler


async def fetch(url: str, dest: Path, session: aiohttp.ClientSession | None = None, **options) -> int:
    """fetch_video as the client calls it, with fake time unless a test passes its own."""
    options.setdefault("sleep", _no_wait)
    own = session is None
    session = session or aiohttp.ClientSession(trust_env=False)
    try:
        return await asyncio.wait_for(fetch_video(session, url, dest, request_id=RID, timing=TIMING,
                                                  rng=random.Random(7), **options), GUARD)
    finally:
        if own:
            await session.close()


async def _no_wait(seconds: float) -> None:
    await asyncio.sleep(0)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def assert_job_kept_message(error: DownloadError) -> None:
    text = str(error)
    assert RID in text and "\n" not in text
    assert "job is kept" in text and "queue again" in text.lower()


# --- 3. only a video takes the final name ------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["text/html", "application/json"])
async def test_page_instead_of_video_is_refused_at_once(host, tmp_path, content_type):
    async def page(request):
        return web.Response(text="<html>Sign in to the hotel Wi-Fi</html>", content_type=content_type)
    base = await host.start({"/v.mp4": page})
    with pytest.raises(DownloadError, match=content_type) as err:
        await fetch(f"{base}/v.mp4", tmp_path / "out.mp4")
    assert_job_kept_message(err.value)
    assert leftovers(tmp_path) == [] and host.paths == ["/v.mp4"]  # refused once, not retried


async def test_body_cut_short_without_a_length_never_becomes_the_video(tmp_path, clip):
    # aiohttp's server always frames a length-less HTTP/1.1 body as chunked, so a cut would show; a body ended only by
    # the connection closing (what old proxies and some CDNs send) looks complete. A plain socket server sends one.
    async def half_then_close(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nConnection: close\r\n\r\n")
        writer.write(clip[: len(clip) // 2])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(half_then_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(DownloadError, match="not a whole video") as err:
            await fetch(f"http://127.0.0.1:{port}/v.mp4", tmp_path / "out.mp4", verify=verify_video)
    finally:
        server.close()
        await server.wait_closed()
    assert_job_kept_message(err.value)
    assert leftovers(tmp_path) == []


async def test_whole_video_passes_the_check_and_is_saved(host, tmp_path, clip):
    base = await host.start({"/v.mp4": video(clip)})
    size = await fetch(f"{base}/v.mp4", tmp_path / "out.mp4", verify=verify_video)
    assert size == len(clip) and (tmp_path / "out.mp4").read_bytes() == clip
    assert leftovers(tmp_path) == ["out.mp4"]


# --- 10. redirects -----------------------------------------------------------------------------------------------

async def test_redirects_on_loopback_are_followed_relative_or_absolute(host, tmp_path, clip):
    routes = {"/v.mp4": redirect("hop1"), "/hop1": redirect("/deep/hop2"), "/deep/hop2": redirect("../hop3"),
              "/hop3": redirect("/hop4", absolute=True), "/hop4": video(clip)}
    base = await host.start(routes)
    await fetch(f"{base}/v.mp4", tmp_path / "out.mp4")
    assert (tmp_path / "out.mp4").read_bytes() == clip
    assert host.paths == ["/v.mp4", "/hop1", "/deep/hop2", "/hop3", "/hop4"]


async def test_more_than_five_redirects_are_refused(host, tmp_path, clip):
    routes = {f"/r{i}": redirect(f"/r{i + 1}") for i in range(6)} | {"/r6": video(clip)}
    base = await host.start(routes)
    with pytest.raises(DownloadError, match="redirected more than 5 times") as err:
        await fetch(f"{base}/r0", tmp_path / "out.mp4")
    assert_job_kept_message(err.value)
    assert leftovers(tmp_path) == [] and "/r6" not in host.paths


async def test_redirect_to_plain_http_elsewhere_is_refused_without_connecting(host, tmp_path):
    base = await host.start({"/v.mp4": redirect("http://192.0.2.1/stolen.mp4")})
    connects = []

    async def on_connect(session, context, params):
        connects.append(params)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_start.append(on_connect)
    async with aiohttp.ClientSession(trust_env=False, trace_configs=[trace]) as session:
        with pytest.raises(DownloadError, match="192.0.2.1") as err:
            await fetch(f"{base}/v.mp4", tmp_path / "out.mp4", session=session)
    assert_job_kept_message(err.value)
    assert len(connects) == 1 and host.paths == ["/v.mp4"]  # only the loopback host was ever connected to
    assert leftovers(tmp_path) == []


# --- 12. time limit, size cap, disk space ------------------------------------------------------------------------

async def test_trickling_download_stops_at_the_time_limit(host, tmp_path):
    base = await host.start({"/v.mp4": endless(b"\0\0\0\x18")})
    ticks = itertools.count(1000.0)  # a clock that moves one second each time it is read: no real waiting
    with pytest.raises(DownloadError, match="took longer than the time limit") as err:
        await fetch(f"{base}/v.mp4", tmp_path / "out.mp4", clock=lambda: next(ticks), deadline=1030.0)
    assert_job_kept_message(err.value)
    assert leftovers(tmp_path) == []


async def test_endless_body_stops_at_the_size_cap(host, tmp_path):
    base = await host.start({"/v.mp4": endless(bytes(64 << 10))})
    with pytest.raises(DownloadError, match="limit") as err:
        await fetch(f"{base}/v.mp4", tmp_path / "out.mp4", max_bytes=1 << 20)
    assert_job_kept_message(err.value)
    assert leftovers(tmp_path) == []


async def test_video_announced_above_the_size_cap_is_refused_before_reading(host, tmp_path, clip):
    base = await host.start({"/v.mp4": video(clip)})
    progress = []
    with pytest.raises(DownloadError, match="limit") as err:
        await fetch(f"{base}/v.mp4", tmp_path / "out.mp4", max_bytes=len(clip) - 1,
                    on_progress=lambda done, total: progress.append(done))
    assert_job_kept_message(err.value)
    assert progress == [] and leftovers(tmp_path) == [] and host.paths == ["/v.mp4"]


async def test_video_larger_than_the_free_disk_space_is_refused_saying_the_room_needed(host, tmp_path):
    async def petabyte(request):
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = 10 ** 15
        await response.prepare(request)
        await response.write(bytes(1024))
        return response

    base = await host.start({"/v.mp4": petabyte})
    with pytest.raises(DownloadError, match=r"needs 1000000\.0 GB of free space") as err:
        await fetch(f"{base}/v.mp4", tmp_path / "out.mp4", max_bytes=10 ** 16)
    assert_job_kept_message(err.value)
    assert str(tmp_path) in str(err.value) and leftovers(tmp_path) == []


# --- 15. temp files of killed processes --------------------------------------------------------------------------

def dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


async def test_temp_files_of_killed_runs_are_swept_and_live_ones_kept(host, tmp_path, clip):
    dead, me = dead_pid(), os.getpid()
    names = {"stale": f".old.mp4.{dead}.1f2e3d.part", "live": f".other.mp4.{me}.4c5b.part",
             "no dot": f"mine.mp4.{dead}.9a.part", "not a part": f".notes.{dead}.txt"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    base = await host.start({"/v.mp4": video(clip)})
    await fetch(f"{base}/v.mp4", tmp_path / "out.mp4")
    assert leftovers(tmp_path) == sorted(["out.mp4", names["live"], names["no dot"], names["not a part"]])
