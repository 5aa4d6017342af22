"""One preflight before any money is spent (issue 11): each refusal is one line and the fake GMI sees nothing."""
from __future__ import annotations

import sys

import pytest

from gmi_video_pack.gmi import preflight
from gmi_video_pack.gmi.errors import InputError, KeyMissingError, MemoryShortError
from gmi_video_pack.gmi.keys import resolve_api_key
from gmi_video_pack.gmi.media_plan import DecodeOptions
from gmi_video_pack.gmi.models import KLING_V3_T2V
from test_lifecycle import make_runner, payload


async def test_no_decoder_refuses_before_paying(gmi, fake_time, tmp_path, monkeypatch):
    monkeypatch.setenv("GMI_DECODER", "pyav")
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH the choice has not been remembered for
    monkeypatch.setitem(sys.modules, "av", None)  # a ComfyUI without PyAV, forced to use it
    with pytest.raises(InputError) as err:
        await make_runner(gmi, fake_time, tmp_path).run(KLING_V3_T2V, payload(), 0, timeout_s=600)
    message = str(err.value)
    assert "decoder" in message.lower() and "\n" not in message and "Nothing was submitted" in message
    assert gmi.api_requests == []


async def test_a_saved_take_without_a_decoder_says_so_and_is_not_called_damaged(gmi, fake_time, tmp_path, monkeypatch,
                                                                                caplog):
    saved = await make_runner(gmi, fake_time, tmp_path).run(KLING_V3_T2V, payload(), 0, timeout_s=600)
    monkeypatch.setenv("GMI_DECODER", "pyav")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(InputError, match="PyAV does not work"):
        await make_runner(gmi, fake_time, tmp_path).run(KLING_V3_T2V, payload(), 0, timeout_s=600)
    assert "damaged" not in caplog.text and saved.path.is_file()
    assert len(gmi.post_bodies) == 1 and len(gmi.media_requests) == 1  # nothing bought or fetched again


async def test_frames_that_would_not_fit_in_memory_are_refused_before_paying(gmi, fake_time, tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "available_memory", lambda: 1 << 30)  # 1 GiB free; 15 s of 720p needs 3.8
    runner = make_runner(gmi, fake_time, tmp_path)
    runner.frames_options = DecodeOptions()
    with pytest.raises(MemoryShortError) as err:
        await runner.run(KLING_V3_T2V, payload(duration=15), 0, timeout_s=600)
    assert "max_side" in str(err.value) and "Nothing was submitted" in str(err.value) and gmi.api_requests == []
    runner.frames_options = DecodeOptions(max_side=320)  # what the message says to do: then it fits and runs
    result = await runner.run(KLING_V3_T2V, payload(duration=15), 0, timeout_s=600)
    assert result.path.is_file() and len(gmi.post_bodies) == 1


async def test_unlinked_frames_need_no_memory(gmi, fake_time, tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "available_memory", lambda: 1 << 30)
    result = await make_runner(gmi, fake_time, tmp_path).run(KLING_V3_T2V, payload(duration=15), 0, timeout_s=600)
    assert result.path.is_file()


async def test_no_key_refuses_before_paying(gmi, fake_time, tmp_path):
    runner = make_runner(gmi, fake_time, tmp_path)
    runner.connect = lambda: resolve_api_key(tmp_path / "no_key_here", environ={})
    with pytest.raises(KeyMissingError):
        await runner.run(KLING_V3_T2V, payload(), 0, timeout_s=600)
    assert gmi.api_requests == []
