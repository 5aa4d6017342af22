"""The shipped example workflows load: known node types, consistent links, our node's widgets in order."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / "workflows").glob("*.json"))
CORE = {"SaveVideo", "SaveAudio", "SaveAudioMP3", "PreviewAudio", "SaveImage", "PreviewImage", "CreateVideo",
        "GetVideoComponents", "SaveAnimatedWEBP", "Note", "MarkdownNote", "ImageScaleBy"}
OURS = {"GMIKlingV3TextToVideo": ["prompt", "negative_prompt", "duration", "aspect_ratio", "sound", "take",
                                  "control_after_generate", "timeout_minutes", "max_frames", "every_nth",
                                  "max_side"]}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_nodes_and_links_fit(path):
    workflow = json.loads(path.read_text())
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for node in nodes.values():
        assert node["type"] in CORE | set(OURS), f"unknown node type {node['type']}"
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        assert nodes[src]["outputs"][src_slot]["type"] == kind
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id and nodes[dst]["inputs"][dst_slot]["type"] == kind
    for node in nodes.values():
        if node["type"] in OURS:
            values = dict(zip(OURS[node["type"]], node["widgets_values"]))
            assert len(node["widgets_values"]) == len(OURS[node["type"]])
            assert values["control_after_generate"] == "fixed", "a shared workflow must not re-bill on every queue"


def test_there_is_an_example_workflow():
    assert any(p.name == "kling_v3_text_to_video.json" for p in WORKFLOWS)
