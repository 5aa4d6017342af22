"""The pack in a real ComfyUI against the fake GMI. Runs only when COMFYUI_ROOT points at a ComfyUI checkout
(COMFYUI_PYTHON: the interpreter of its environment). CI has no ComfyUI; a developer runs this by hand."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from workflow_api import to_api

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_ROOT = os.environ.get("COMFYUI_ROOT")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)

pytestmark = pytest.mark.skipif(not COMFYUI_ROOT, reason="set COMFYUI_ROOT to check the pack in a real ComfyUI")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Host:
    """One ComfyUI server process over a base directory that holds only this pack as a custom node."""

    def __init__(self, base: Path, env: dict):
        self.base, self.env, self.port, self.proc = base, env, free_port(), None
        (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        packs = {"gmi-cloud-video": ROOT}
        if os.environ.get("COMFYUI_VHS"):  # a VideoHelperSuite checkout, for the workflow that needs it
            packs["ComfyUI-VideoHelperSuite"] = Path(os.environ["COMFYUI_VHS"])
        example = Path(COMFYUI_ROOT) / "input" / "example.png"  # Load Image's default, for the image example
        if example.is_file() and not (base / "input" / "example.png").exists():
            (base / "input").mkdir(parents=True, exist_ok=True)
            (base / "input" / "example.png").write_bytes(example.read_bytes())
        for name, source in packs.items():
            link = base / "custom_nodes" / name
            if not link.exists():
                link.symlink_to(source, target_is_directory=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = base / "server.log"

    async def start(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [COMFYUI_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--disable-api-nodes", "--base-directory", str(self.base),
               "--database-url", f"sqlite:///{self.base}/comfyui.db"]
        self.proc = subprocess.Popen(cmd, cwd=COMFYUI_ROOT, env=self.env, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        async with aiohttp.ClientSession() as s:
            for _ in range(600):
                if self.proc.poll() is not None:
                    raise RuntimeError("ComfyUI exited:\n" + self.log.read_text()[-3000:])
                try:
                    async with s.get(self.url + "/object_info/GMIKlingV3TextToVideo") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError("ComfyUI did not come up")

    def kill(self) -> None:
        """As if the machine lost power: no cleanup at all."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    async def get(self, path: str):
        async with aiohttp.ClientSession() as s, s.get(self.url + path) as r:
            return await r.json()

    async def queue(self, graph: dict, client_id: str | None = None) -> str:
        async with aiohttp.ClientSession() as s, s.post(self.url + "/prompt", json={
                "prompt": graph, "client_id": client_id or uuid.uuid4().hex}) as r:
            body = await r.json()
            assert r.status == 200, body
            return body["prompt_id"]

    async def node_texts(self, client_id: str, texts: list, ready: asyncio.Event) -> None:
        """Collects (node id, text) of every progress text the server sends this browser, as the frontend reads it."""
        async with aiohttp.ClientSession() as s, s.ws_connect(f"{self.url}/ws?clientId={client_id}") as ws:
            ready.set()
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY and int.from_bytes(msg.data[:4], "big") == 3:
                    size = int.from_bytes(msg.data[4:8], "big")
                    texts.append((msg.data[8:8 + size].decode(), msg.data[8 + size:].decode()))

    async def interrupt(self) -> None:
        async with aiohttp.ClientSession() as s, s.post(self.url + "/interrupt") as r:
            assert r.status == 200

    async def wait(self, prompt_id: str, timeout: float = 120) -> dict:
        for _ in range(int(timeout / 0.2)):
            history = await self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"]["status_str"] in ("success", "error"):
                    return entry
            await asyncio.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish; log:\n{self.log.read_text()[-3000:]}")


@pytest.fixture
async def host(gmi, tmp_path):
    gmi.wall = time.time  # the server's journal uses the real clock
    env = {**os.environ, "GMI_API_KEY": gmi.key, "GMI_BASE_URL": gmi.base_url, "HF_HUB_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    server = Host(tmp_path / "comfy", env)
    await server.start()
    try:
        yield server
    finally:
        server.stop()


FIRST_EXAMPLE = "Kling v3 text to video (GMI Cloud).json"


def paid(graph: dict) -> dict:
    """The examples open in rehearsal (free): these checks are about the paid path, against the fake GMI."""
    for node in graph.values():
        if node["class_type"] in ("GMIKlingV3TextToVideo", "GMIKlingV3ImageToVideo", "GMIKlingV3OmniStoryboard"):
            node["inputs"]["rehearse"] = False
    return graph


def example_graph(object_info: dict, rehearse: bool = False) -> dict:
    graph = to_api(json.loads((ROOT / "workflows" / FIRST_EXAMPLE).read_text()), object_info)
    return graph if rehearse else paid(graph)


async def test_example_workflow_runs_and_requeue_costs_nothing_even_after_restart(host, gmi):
    info = await host.get("/object_info")
    assert "IMPORT FAILED" not in host.log.read_text() and "GMICollectVideo" in info
    for prefix in ("", "/api"):  # the settings panel's route answers, and never with the key
        assert await host.get(prefix + "/gmi_cloud/key") == {"set": True, "source": "environment",
                                                               "last4": gmi.key[-4:]}
    assert info["GMICollectVideo"]["output_name"] == info["GMIKlingV3TextToVideo"]["output_name"]
    ours = info["GMIKlingV3TextToVideo"]
    assert ours["display_name"] == "Kling v3 Text to Video (GMI Cloud)" and ours["category"] == "GMI Cloud/Video"
    assert ours["output_name"] == ["video", "frames", "audio", "fps", "frame_count", "request_id", "path"]
    graph = example_graph(info)
    entry = await host.wait(await host.queue(graph))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(gmi.created) == 1
    outputs = entry["outputs"]
    preview = outputs["1"]["images"][0]
    assert preview["subfolder"] == "gmi" and gmi.created[0] in preview["filename"]
    saved_video = outputs["2"]["images"][0]
    assert saved_video["filename"].endswith(".mp4")
    assert (host.base / "output" / saved_video["subfolder"] / saved_video["filename"]).stat().st_size > 0
    assert (host.base / "output" / "gmi" / preview["filename"]).is_file()
    assert outputs["3"]["audio"][0]["filename"].endswith(".flac")
    assert len(outputs["4"]["images"]) == 48  # every frame reached the frame consumer
    log = host.log.read_text()
    assert gmi.key not in log

    requests_before = len(gmi.api_requests)
    graph["2"]["inputs"]["filename_prefix"] = "video/again"  # the saver runs again; our node is cached
    entry = await host.wait(await host.queue(graph))
    assert entry["status"]["status_str"] == "success" and len(gmi.api_requests) == requests_before

    host.stop()
    await host.start()
    entry = await host.wait(await host.queue(graph))
    assert entry["status"]["status_str"] == "success"
    assert len(gmi.api_requests) == requests_before and len(gmi.created) == 1  # reused from the journal
    assert gmi.key not in host.log.read_text()


async def test_bad_combo_value_over_the_api_is_refused_before_paying(host, gmi):
    graph = example_graph(await host.get("/object_info"))
    graph["1"]["inputs"]["aspect_ratio"] = "4:3"
    async with aiohttp.ClientSession() as s, s.post(host.url + "/prompt", json={"prompt": graph}) as r:
        body = await r.json()
    if r.status == 200:
        entry = await host.wait(body["prompt_id"])
        text = json.dumps(entry["status"])
    else:
        text = json.dumps(body)
    assert "aspect_ratio" in text and "16:9, 9:16, 1:1" in text
    assert gmi.post_bodies == []


async def test_cancel_while_polling_stops_fast_and_requeue_collects_without_paying(host, gmi):
    gmi.never_finish = True
    graph = example_graph(await host.get("/object_info"))
    client_id, texts, ready = uuid.uuid4().hex, [], asyncio.Event()
    listener = asyncio.ensure_future(host.node_texts(client_id, texts, ready))
    await ready.wait()
    prompt_id = await host.queue(graph, client_id)
    for _ in range(300):
        if gmi.status_reads() >= 1:
            break
        await asyncio.sleep(0.1)
    assert len(gmi.created) == 1
    loop = asyncio.get_running_loop()
    pressed = loop.time()
    await host.interrupt()
    entry = await host.wait(prompt_id)
    stopped_after = loop.time() - pressed
    messages = json.dumps(entry["status"]["messages"])
    assert "execution_interrupted" in messages, messages
    print(f"\nCancel pressed -> prompt ended as interrupted after {stopped_after:.2f}s")
    assert stopped_after < 3.0, stopped_after
    await asyncio.sleep(0.5)
    listener.cancel()
    node = next(n for n, v in graph.items() if v["class_type"] == "GMIKlingV3TextToVideo")
    last = [text for n, text in texts if n == node][-1]
    print(f"the node says: {last}")
    assert last.startswith("interrupted") and gmi.created[0] in last and "nothing new is paid" in last
    gmi.never_finish = False
    entry = await host.wait(await host.queue(graph))
    assert entry["status"]["status_str"] == "success"
    assert len(gmi.post_bodies) == 1


async def cancel_while_the_post_is_out(host: Host, gmi, *, then: str) -> tuple[dict, dict]:
    """Queues the example; GMI makes (and bills) the job, Cancel is pressed while the POST is out, and then GMI's
    answer arrives (``then="answer"``) or is lost (``"cut"``). Returns the graph and the prompt's history entry."""
    after_cancel = asyncio.Event()
    gmi.faults["post_after_create"].append({"wait": after_cancel, "then": then})
    graph = example_graph(await host.get("/object_info"))
    prompt_id = await host.queue(graph)
    for _ in range(300):
        if gmi.jobs:
            break
        await asyncio.sleep(0.1)
    await host.interrupt()
    await asyncio.sleep(0.5)
    after_cancel.set()
    return graph, await host.wait(prompt_id)


async def test_cancel_while_the_post_is_out_ends_interrupted_and_the_queue_goes_on(host, gmi):
    """The answer arrives after Cancel; its progress update meets ComfyUI's hook, which takes the interrupt flag.
    The prompt must still end as interrupted (not kill ComfyUI's worker thread), and the next prompt must run."""
    gmi.never_finish = True
    graph, entry = await cancel_while_the_post_is_out(host, gmi, then="answer")
    assert "execution_interrupted" in json.dumps(entry["status"]["messages"]), entry["status"]
    gmi.never_finish = False
    entry = await host.wait(await host.queue(graph))  # the queue still runs, and the take is collected
    assert entry["status"]["status_str"] == "success" and len(gmi.post_bodies) == 1


async def test_cancel_while_the_post_is_out_and_its_answer_is_lost_says_a_job_may_be_billed(host, gmi):
    graph, entry = await cancel_while_the_post_is_out(host, gmi, then="cut")
    messages = json.dumps(entry["status"]["messages"])
    assert entry["status"]["status_str"] == "error" and "billed" in messages, messages  # not "nothing was paid"
    entry = await host.wait(await host.queue(graph))
    assert "not be submitted again" in json.dumps(entry["status"]["messages"])
    assert len(gmi.post_bodies) == 1


async def test_killed_while_polling_then_restarted_reattaches_without_paying(host, gmi):
    gmi.never_finish = True
    graph = example_graph(await host.get("/object_info"))
    await host.queue(graph)
    for _ in range(300):
        if gmi.status_reads() >= 1:
            break
        await asyncio.sleep(0.1)
    host.kill()
    gmi.never_finish = False
    await host.start()
    entry = await host.wait(await host.queue(graph))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(gmi.post_bodies) == 1
    assert gmi.created[0] in entry["outputs"]["1"]["images"][0]["filename"]


async def test_collect_node_fetches_a_console_job_and_the_key_is_in_no_artefact(host, gmi):
    rid = gmi.add_console_job({"prompt": "made in the console", "aspect_ratio": "9:16", "sound": "on"})
    graph = {"1": {"class_type": "GMICollectVideo", "inputs": {"request_id": rid}},
             "2": {"class_type": "SaveVideo", "inputs": {"video": ["1", 0], "filename_prefix": "video/collected",
                                                         "format": "auto", "codec": "auto"}},
             "3": {"class_type": "SaveAudio", "inputs": {"audio": ["1", 2], "filename_prefix": "audio/collected"}},
             "4": {"class_type": "SaveImage", "inputs": {"images": ["1", 1], "filename_prefix": "frames/collected"}}}
    prompt_id = await host.queue(graph)
    entry = await host.wait(prompt_id)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert gmi.post_bodies == []
    assert len(entry["outputs"]["4"]["images"]) == 48
    bad = dict(graph)
    bad["1"] = {"class_type": "GMICollectVideo", "inputs": {"request_id": "0123456789abcdef"}}
    entry = await host.wait(await host.queue(bad))
    assert entry["status"]["status_str"] == "error"
    assert "no request '0123456789abcdef'" in json.dumps(entry["status"]["messages"])
    # Every artefact of these runs: files the server wrote (outputs with their metadata, journal, database,
    # logs, settings) and the history the browser reads.
    history = json.dumps(await host.get("/history"))
    key = gmi.key.encode()
    leaked = [p for p in host.base.rglob("*") if p.is_file() and not p.is_symlink() and key in p.read_bytes()]
    assert leaked == [] and gmi.key not in history


async def test_sibling_failure_tears_down_the_prompt_and_requeue_collects_without_paying(host, gmi):
    gmi.polls_until_done = 3

    async def unknown_id_fails_once_the_take_is_polling(request):
        if request.match_info["rid"] != "0123456789abcdef":
            return None
        while gmi.status_reads() < 2:  # this read counts as one: wait for the generating node's first poll
            await asyncio.sleep(0.05)
        return None  # then GMI's normal 404 for an unknown id

    gmi.status_hook = unknown_id_fails_once_the_take_is_polling
    graph = example_graph(await host.get("/object_info"))
    failing = dict(graph)
    failing["9"] = {"class_type": "GMICollectVideo", "inputs": {"request_id": "0123456789abcdef"}}
    entry = await host.wait(await host.queue(failing))
    assert entry["status"]["status_str"] == "error"
    assert len(gmi.created) == 1 and "no request '0123456789abcdef'" in json.dumps(entry["status"]["messages"])
    entry = await host.wait(await host.queue(graph))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(gmi.post_bodies) == 1


async def test_sibling_failure_during_the_post_keeps_the_paid_id_and_requeue_pays_nothing(host, gmi):
    """ComfyUI ends the prompt (asyncio.run cancels every task of its loop) while GMI has made the job and its answer
    is still on the way: the answer must still reach the journal."""
    torn_down = asyncio.Event()

    async def unknown_id_fails_once_the_post_is_out(request):
        if request.match_info["rid"] != "0123456789abcdef":
            return None
        while not gmi.jobs:
            await asyncio.sleep(0.05)
        torn_down.set()
        return None  # GMI's 404 for an unknown id: the prompt fails

    gmi.status_hook = unknown_id_fails_once_the_post_is_out
    gmi.faults["post_after_create"].append({"wait": torn_down, "after": 1.0})  # made; answered after the teardown
    graph = example_graph(await host.get("/object_info"))
    failing = dict(graph)
    failing["9"] = {"class_type": "GMICollectVideo", "inputs": {"request_id": "0123456789abcdef"}}
    entry = await host.wait(await host.queue(failing))
    assert entry["status"]["status_str"] == "error" and len(gmi.created) == 1
    entry = await host.wait(await host.queue(graph))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(gmi.post_bodies) == 1


def first_frame_size(host: Host, entry: dict) -> tuple[int, int]:
    frame = entry["outputs"]["4"]["images"][0]
    png = (host.base / "temp" / frame["subfolder"] / frame["filename"]).read_bytes()
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # PNG IHDR width, height


async def test_frames_linked_later_are_decoded_not_a_stale_placeholder(host, gmi):
    graph = example_graph(await host.get("/object_info"))
    only_video = {k: v for k, v in graph.items() if v["class_type"] in ("GMIKlingV3TextToVideo", "SaveVideo")}
    entry = await host.wait(await host.queue(only_video))
    assert entry["status"]["status_str"] == "success", entry["status"]
    entry = await host.wait(await host.queue(graph))  # same node inputs; now frames and audio are linked
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(entry["outputs"]["4"]["images"]) == 48 and first_frame_size(host, entry) == (320, 180)
    graph["1"]["inputs"]["max_side"] = 160
    entry = await host.wait(await host.queue(graph))
    assert len(entry["outputs"]["4"]["images"]) == 48 and first_frame_size(host, entry) == (160, 90)
    assert len(gmi.post_bodies) == 1


@pytest.mark.parametrize("name,saved,folder", [("Kling v3 upscale the frames (GMI Cloud).json", 1, "video"),
                                               ("Kling v3 two takes and a vertical (GMI Cloud).json", 3, "gmi")])
async def test_example_workflows_run_on_core_nodes(host, gmi, name, saved, folder):
    info = await host.get("/object_info")
    workflow = json.loads((ROOT / "workflows" / name).read_text())
    graph = paid(to_api(workflow, info))  # every node type, input name and link checked against the real host
    entry = await host.wait(await host.queue(graph))
    assert entry["status"]["status_str"] == "success", entry["status"]
    videos = [o["images"][0] for o in entry["outputs"].values() if o.get("images") and o["images"][0].get(
        "subfolder") == folder]
    assert len(videos) == saved and len(gmi.created) == saved


async def test_rehearsal_runs_the_whole_graph_without_touching_gmi(host, gmi):
    graph = example_graph(await host.get("/object_info"), rehearse=True)  # as shipped: the first Run is free
    assert graph["1"]["inputs"]["rehearse"] is True
    graph["1"]["inputs"].update(duration=3, max_side=320)
    entry = await host.wait(await host.queue(graph))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert gmi.api_requests == [] and gmi.media_requests == []
    assert "rehearsal" in entry["outputs"]["1"]["images"][0]["filename"]
    assert len(entry["outputs"]["4"]["images"]) == 72 and first_frame_size(host, entry) == (320, 180)


@pytest.mark.skipif(not os.environ.get("COMFYUI_VHS"), reason="set COMFYUI_VHS to a VideoHelperSuite checkout")
async def test_videohelpersuite_workflow_runs(host, gmi):
    info = await host.get("/object_info")
    workflow = json.loads((ROOT / "workflows" / "needs_videohelpersuite" /
                           "Kling v3 into VHS Video Combine (GMI Cloud).json").read_text())
    entry = await host.wait(await host.queue(paid(to_api(workflow, info))))
    assert entry["status"]["status_str"] == "success", entry["status"]
    (combined,) = [o for o in entry["outputs"].values() if "gifs" in o]
    assert combined["gifs"][0]["filename"].endswith(".mp4") and len(gmi.created) == 1


async def test_image_to_video_example_rehearses_free_then_pays_once(host, gmi):
    info = await host.get("/object_info")
    workflow = json.loads((ROOT / "workflows" / "Kling v3 image to video (GMI Cloud).json").read_text())
    graph = to_api(workflow, info)
    entry = await host.wait(await host.queue(graph))  # as shipped: rehearsal
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert gmi.api_requests == []
    entry = await host.wait(await host.queue(paid(graph)))
    assert entry["status"]["status_str"] == "success", entry["status"]
    (body,) = gmi.post_bodies
    assert body["model"] == "kling-v3-image-to-video" and body["payload"]["image"].startswith("iVBOR")  # a PNG
    entry = await host.wait(await host.queue(paid(graph)))  # queued again: reused, nothing new paid
    assert entry["status"]["status_str"] == "success" and len(gmi.post_bodies) == 1


async def test_storyboard_example_gives_one_shot_alone_free_then_pays_once(host, gmi):
    from gmi_video_pack.gmi.media import probe

    info = await host.get("/object_info")
    workflow = json.loads((ROOT / "workflows" / "Kling v3 Omni storyboard, shot by shot (GMI Cloud).json").read_text())
    graph = to_api(workflow, info)
    entry = await host.wait(await host.queue(graph))  # as shipped: rehearsal, 2 s + 3 s + 2 s at 720p
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert gmi.api_requests == []
    saved = {o["images"][0]["filename"]: o["images"][0] for o in entry["outputs"].values()
             if o.get("images") and o["images"][0].get("subfolder") == "video"}
    shot = next(v for k, v in saved.items() if k.startswith("gmi_storyboard_shot2"))
    clip = probe(host.base / "output" / shot["subfolder"] / shot["filename"])
    assert clip.frame_count == 72 and (clip.width, clip.height) == (1920, 1080)  # shot 2 alone, upscaled 1.5x
    graph = paid(graph)
    next(n for n in graph.values() if n["class_type"] == "GMISelectShot")["inputs"]["index"] = 1
    entry = await host.wait(await host.queue(graph))
    assert entry["status"]["status_str"] == "success", entry["status"]
    (body,) = gmi.post_bodies
    assert body["model"] == "kling-v3-omni" and len(body["payload"]["multi_prompt"]) == 3
