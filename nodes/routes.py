"""The pack's HTTP routes on ComfyUI's server: the API key's settings panel. Plain aiohttp handlers (no host imports),
so tests mount them on a bare application; host.register_routes() adds them to ComfyUI's."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

from aiohttp import web
from yarl import URL

from ..gmi.client import GMIClient
from ..gmi.errors import GMIError, InputError
from ..gmi.keys import forget_key, key_status, resolve_api_key, store_key
from ..gmi.models import CATALOGUE

PREFIX = "/gmi_cloud"


def _refusal(request: web.Request) -> web.Response | None:
    """Why a request that changes or uses the key is refused, or None. Browsers send any page's POST with a text/plain
    body without asking first, and send ``Origin`` with it: only ComfyUI's own page, with JSON, may go on."""
    origin = request.headers.get("Origin")
    if origin is not None and not _same_host(origin, request.headers.get("Host")):
        return web.json_response({"error": "Refused: this request came from another site, not from ComfyUI's own page; "
                                           "set the key in ComfyUI's settings opened at this server's address (behind "
                                           "a proxy, pass the Host header on unchanged)."}, status=403)
    if request.method == "POST" and request.content_type != "application/json":
        return web.json_response({"error": "Refused: send the request as JSON (Content-Type: application/json), "
                                           "as ComfyUI's settings panel does."}, status=415)
    return None


def _same_host(origin: str, host: str | None) -> bool:
    """Whether ``origin`` names the host and port the browser addressed this server by (its ``Host`` header)."""
    try:
        page = URL(origin)
        server = URL.build(scheme=page.scheme, authority=host or "")
    except (ValueError, TypeError):
        return False
    return page.scheme in ("http", "https") and bool(page.host) and (page.host, page.port) == (server.host, server.port)


def price_table(spec) -> dict:
    """One model's per-second rates for the badge: with and without sound, and by mode where the model has modes."""
    table = spec.price_per_second
    if all(isinstance(key, bool) for key in table):
        return {"per_second": {"on": table[True], "off": table[False]}, "source": spec.price_source}
    modes = {mode: {"on": table[(mode, True)], "off": table[(mode, False)]} for mode, _ in table}
    return {"per_second": next(iter(modes.values())), "by_mode": modes, "source": spec.price_source}


def key_routes(key_file: Callable[[], Path], base_url: Callable[[], str]) -> web.RouteTableDef:
    """GET/POST/DELETE {PREFIX}/key and POST {PREFIX}/key/test. The key goes in, never out: answers carry only
    whether one is set, where from, and its last four characters. GET {PREFIX}/prices: the catalogue's rates."""
    routes = web.RouteTableDef()

    @routes.get(PREFIX + "/key")
    async def status(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(key_status, key_file()))

    @routes.post(PREFIX + "/key")
    async def save(request: web.Request) -> web.Response:
        if refused := _refusal(request):
            return refused
        try:
            body = await request.json()
        except ValueError:
            body = None
        try:
            await asyncio.to_thread(store_key, key_file(), body.get("key") if isinstance(body, dict) else None)
        except InputError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(await asyncio.to_thread(key_status, key_file()))

    @routes.delete(PREFIX + "/key")
    async def forget(request: web.Request) -> web.Response:
        if refused := _refusal(request):
            return refused
        await asyncio.to_thread(forget_key, key_file())
        return web.json_response(await asyncio.to_thread(key_status, key_file()))

    @routes.get(PREFIX + "/prices")
    async def prices(request: web.Request) -> web.Response:
        # The table the node shows its estimate from (GMI's own rate, once learned, replaces it at submit).
        return web.json_response({spec.model_id: price_table(spec) for spec in CATALOGUE.values()})

    @routes.post(PREFIX + "/key/test")
    async def test(request: web.Request) -> web.Response:
        if refused := _refusal(request):
            return refused
        try:
            key = await asyncio.to_thread(resolve_api_key, key_file())
            async with GMIClient(base_url(), key) as client:
                await client.check_key()
        except GMIError as exc:
            return web.json_response({"ok": False, "error": str(exc)})
        return web.json_response({"ok": True})

    return routes
