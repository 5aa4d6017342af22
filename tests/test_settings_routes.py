"""The API key's settings routes: stored owner-only, never sent back, the environment variable wins."""
from __future__ import annotations

import stat

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gmi_video_pack.nodes.routes import key_routes

KEY = "gmi-" + "k" * 28 + "abcd"


@pytest.fixture
async def panel(tmp_path, gmi):
    key_file = tmp_path / "user" / "gmi_cloud" / "api_key"
    app = web.Application()
    app.add_routes(key_routes(lambda: key_file, lambda: gmi.base_url))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client, key_file
    finally:
        await client.close()


async def test_store_never_echoes_and_file_is_owner_only(panel):
    client, key_file = panel
    resp = await client.post("/gmi_cloud/key", json={"key": f"  {KEY}\n"})
    body = await resp.text()
    assert resp.status == 200 and KEY not in body and KEY[:-4] not in body
    assert await resp.json() == {"set": True, "source": "file", "last4": "abcd"}
    assert key_file.read_text().strip() == KEY
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    status = await (await client.get("/gmi_cloud/key")).text()
    assert KEY not in status and '"last4": "abcd"' in status


async def test_environment_variable_wins(panel, monkeypatch):
    client, key_file = panel
    await client.post("/gmi_cloud/key", json={"key": KEY})
    monkeypatch.setenv("GMI_API_KEY", "env-" + "e" * 28 + "wxyz")
    assert await (await client.get("/gmi_cloud/key")).json() == {"set": True, "source": "environment", "last4": "wxyz"}


@pytest.mark.parametrize("bad,words", [("", "empty"), ("   ", "empty"), ("short", "characters long"),
                                       ("x" * 600, "characters long"), ("has space in the middle ok", "spaces"),
                                       (None, "empty"), (12345678901234567890, "empty")])
async def test_empty_or_absurd_keys_are_refused_in_one_line(panel, bad, words):
    client, key_file = panel
    resp = await client.post("/gmi_cloud/key", json={"key": bad})
    body = await resp.json()
    assert resp.status == 400 and words in body["error"] and "\n" not in body["error"]
    assert not key_file.exists()
    if isinstance(bad, str) and len(bad) > 3:
        assert bad not in body["error"]


async def test_forget_removes_the_key(panel):
    client, key_file = panel
    await client.post("/gmi_cloud/key", json={"key": KEY})
    assert await (await client.delete("/gmi_cloud/key")).json() == {"set": False, "source": None, "last4": None}
    assert not key_file.exists()


async def test_test_button_checks_the_key_with_gmi(panel, gmi):
    client, key_file = panel
    await client.post("/gmi_cloud/key", json={"key": gmi.key})
    assert await (await client.post("/gmi_cloud/key/test", json={})).json() == {"ok": True}
    await client.post("/gmi_cloud/key", json={"key": KEY})
    result = await (await client.post("/gmi_cloud/key/test", json={})).json()
    assert result["ok"] is False and "HTTP 401" in result["error"] and KEY not in result["error"]
    await client.delete("/gmi_cloud/key")
    result = await (await client.post("/gmi_cloud/key/test", json={})).json()
    assert result["ok"] is False and "GMI_API_KEY" in result["error"]


async def test_prices_route_gives_the_table_the_node_estimates_from(panel):
    client, _ = panel
    table = await (await client.get("/gmi_cloud/prices")).json()
    assert table["kling-v3-text-to-video"]["per_second"] == {"on": 0.252, "off": 0.168}


@pytest.mark.parametrize("method,path", [("POST", "/gmi_cloud/key"), ("DELETE", "/gmi_cloud/key"),
                                         ("POST", "/gmi_cloud/key/test")])
async def test_another_site_cannot_set_forget_or_test_the_key(panel, method, path):
    client, key_file = panel
    await client.post("/gmi_cloud/key", json={"key": KEY})
    for origin in ("http://evil.example", f"http://127.0.0.1:{client.port + 1}", "null"):
        resp = await client.request(method, path, json={"key": "gmi-" + "a" * 28 + "evil"},
                                    headers={"Origin": origin})
        body = await resp.json()
        assert resp.status == 403 and "\n" not in body["error"] and "ComfyUI" in body["error"]
    assert key_file.read_text().strip() == KEY


async def test_key_posted_as_plain_text_is_refused(panel):
    # text/plain is what a page on another site can send without asking the browser first
    client, key_file = panel
    for path in ("/gmi_cloud/key", "/gmi_cloud/key/test"):
        resp = await client.post(path, data='{"key": "%s"}' % KEY, headers={"Content-Type": "text/plain"})
        body = await resp.json()
        assert resp.status == 415 and "application/json" in body["error"] and "\n" not in body["error"]
    assert not key_file.exists()


async def test_comfyui_own_page_still_sets_and_reads_the_key(panel):
    client, key_file = panel
    own = {"Origin": f"http://127.0.0.1:{client.port}"}
    resp = await client.post("/gmi_cloud/key", json={"key": KEY}, headers=own)
    assert resp.status == 200 and key_file.read_text().strip() == KEY
    other = {"Origin": "http://evil.example"}
    assert (await (await client.get("/gmi_cloud/key", headers=other)).json())["last4"] == "abcd"
    assert (await client.get("/gmi_cloud/prices", headers=other)).status == 200
    assert (await client.delete("/gmi_cloud/key", headers=own)).status == 200 and not key_file.exists()
