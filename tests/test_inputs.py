"""Bad input is refused with one line naming the input and what is allowed, before anything is paid."""
from __future__ import annotations

import pytest

from gmi_video_pack.gmi.client import check_url, pick_video_url
from gmi_video_pack.gmi.errors import InputError
from gmi_video_pack.gmi.models import KLING_V3_T2V, check_take
from gmi_video_pack.nodes.graph import linked_outputs

GOOD = {"prompt": "a fox", "negative_prompt": "", "duration": 5, "aspect_ratio": "16:9", "sound": True}


@pytest.mark.parametrize("change,names", [
    ({"prompt": "   "}, ["prompt", "empty"]),
    ({"prompt": "x" * 2501}, ["prompt", "2500"]),
    ({"duration": 2}, ["duration", "3-15"]),
    ({"duration": 16}, ["duration", "3-15"]),
    ({"duration": "five"}, ["duration", "whole number"]),
    ({"aspect_ratio": "4:3"}, ["aspect_ratio", "16:9, 9:16, 1:1"]),
    ({"sound": "loud"}, ["sound", "on/off"]),
])
def test_bad_value_names_the_input_and_what_is_allowed(change, names):
    with pytest.raises(InputError) as err:
        KLING_V3_T2V.build_payload({**GOOD, **change})
    message = str(err.value)
    assert all(n in message for n in names) and "\n" not in message


def test_prompt_is_trimmed_and_2500_characters_pass():
    payload = KLING_V3_T2V.build_payload({**GOOD, "prompt": "  " + "y" * 2500 + " \n"})
    assert payload["prompt"] == "y" * 2500


@pytest.mark.parametrize("take", [-1, 1.5, True, "3"])
def test_take_must_be_a_whole_number_from_zero(take):
    with pytest.raises(InputError, match="take"):
        check_take(take)


def test_media_url_picks_the_video_never_the_thumbnail():
    outcome = {"thumbnail_image_url": "https://x/t.jpg",
               "media_urls": [{"id": "0", "url": "https://x/t.jpg"}, "https://x/cover.png", {"url": "https://x/v.mp4"}]}
    assert pick_video_url(outcome) == "https://x/v.mp4"
    assert pick_video_url({"video_url": "https://x/old.mp4"}) == "https://x/old.mp4"
    assert pick_video_url({"media_urls": ["https://x/noext"]}) == "https://x/noext"
    assert pick_video_url({"thumbnail_image_url": "https://x/t.jpg"}) is None


@pytest.mark.parametrize("url,ok", [("https://storage.example/v.mp4", True), ("http://127.0.0.1:9/v.mp4", True),
                                    ("http://localhost/v.mp4", True), ("http://[::1]:8/v.mp4", True),
                                    ("http://storage.example/v.mp4", False), ("ftp://x/v.mp4", False),
                                    ("http://10.0.0.1/v.mp4", False)])
def test_only_https_or_loopback_http(url, ok):
    if ok:
        check_url(url, "media URL")
    else:
        with pytest.raises(InputError, match="https"):
            check_url(url, "media URL")


def test_linked_outputs_reads_the_graph():
    graph = {"3": {"class_type": "GMIKlingV3TextToVideo", "inputs": {"prompt": "x"}},
             "4": {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], "filename_prefix": "v"}},
             "5": {"class_type": "SaveAudio", "inputs": {"audio": ["3", 2]}},
             "6": {"class_type": "PreviewImage", "inputs": {"images": ["9", 1]}}}
    assert linked_outputs(graph, "3") == {0, 2}
    assert linked_outputs(None, "3") is None


@pytest.mark.parametrize("name,value,words", [("GMI_SPEND_CAP_USD", "twenty", "amount of dollars"),
                                              ("GMI_SPEND_CAP_USD", "-5", "amount of dollars"),
                                              ("GMI_MAX_JOBS", "0", "1-64"), ("GMI_MAX_JOBS", "four", "1-64")])
def test_bad_environment_values_are_refused_in_one_line(name, value, words):
    from gmi_video_pack.gmi import settings

    reader = settings.spend_cap if name == "GMI_SPEND_CAP_USD" else settings.max_jobs
    with pytest.raises(InputError) as err:
        reader({name: value})
    assert name in str(err.value) and words in str(err.value) and "\n" not in str(err.value)


def test_environment_values_and_defaults():
    from gmi_video_pack.gmi import settings

    assert settings.spend_cap({}) is None and settings.spend_cap({"GMI_SPEND_CAP_USD": "$12.5"}) == 12.5
    assert settings.max_jobs({}) == 4 and settings.max_jobs({"GMI_MAX_JOBS": "8"}) == 8
    assert settings.base_url({}) == "https://console.gmicloud.ai"
