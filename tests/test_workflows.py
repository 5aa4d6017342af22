"""The shipped example workflows load: known node types, consistent links, our node's widgets in order, a note each."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / "workflows").glob("*.json"))
# Core node names of ComfyUI (../shared/comfyui-host.md) that the examples may use.
CORE = {"SaveVideo", "SaveAudio", "SaveAudioMP3", "PreviewAudio", "SaveImage", "PreviewImage", "CreateVideo",
        "GetVideoComponents", "SaveAnimatedWEBP", "Note", "MarkdownNote", "ImageScaleBy"}
THIRD_PARTY = {"VHS_VideoCombine": "VideoHelperSuite"}
OURS = {"GMIKlingV3TextToVideo": ["prompt", "negative_prompt", "duration", "aspect_ratio", "sound", "take",
                                  "control_after_generate", "timeout_minutes", "max_frames", "every_nth",
                                  "max_side", "rehearse"]}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_nodes_and_links_fit(path):
    workflow = load(path)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for node in nodes.values():
        assert node["type"] in CORE | set(OURS) | set(THIRD_PARTY), f"unknown node type {node['type']}"
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        assert nodes[src]["outputs"][src_slot]["type"] == kind
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id and nodes[dst]["inputs"][dst_slot]["type"] == kind
    assert workflow["last_link_id"] == max((link[0] for link in workflow["links"]), default=0)
    assert workflow["last_node_id"] == max(nodes)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_our_nodes_start_fixed_with_every_widget(path):
    ours = [n for n in load(path)["nodes"] if n["type"] in OURS]
    assert ours
    for node in ours:
        values = dict(zip(OURS[node["type"]], node["widgets_values"]))
        assert len(node["widgets_values"]) == len(OURS[node["type"]])
        assert values["control_after_generate"] == "fixed", "a shared workflow must not re-bill on every queue"
        assert values["aspect_ratio"] in ("16:9", "9:16", "1:1") and 3 <= values["duration"] <= 15
        assert values["rehearse"] is False, "examples run for real; rehearsal is the user's switch"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_each_workflow_explains_itself_and_names_what_it_needs(path):
    workflow = load(path)
    notes = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "Note"]
    assert notes and len(notes[0]) > 80
    for node in workflow["nodes"]:
        if node["type"] in THIRD_PARTY:
            assert THIRD_PARTY[node["type"]] in notes[0] and "NEEDS" in notes[0]


def test_the_examples_users_are_promised_are_there():
    names = {p.name for p in WORKFLOWS}
    assert {"kling_v3_text_to_video.json", "kling_v3_upscale_frames.json", "kling_v3_two_takes_and_vertical.json",
            "kling_v3_vhs_video_combine.json"} <= names
