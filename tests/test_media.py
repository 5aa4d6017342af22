"""Decoding real MP4s made by ffmpeg: frames exact against ffmpeg's own rgb24, audio shape and rate, silence."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CLIP_FPS, CLIP_SECONDS, CLIP_SIZES, make_clip
from gmi_video_pack.gmi.errors import InputError, MediaError, MemoryShortError
from gmi_video_pack.gmi.media import (DecodeOptions, check_memory, decode_audio, decode_clip, decode_frames, ffmpeg_exe,
                                      plan_frames, probe, run_child, start_child)


def ffmpeg_rgb24(path, width, height) -> np.ndarray:
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def decode(path):
    info = probe(path)
    out = np.empty((info.frame_count, info.height, info.width, 3), np.float32)
    count = decode_frames(path, info, out)
    return info, out[:count]


def decode_as_the_node(path):
    """decode_clip, as the nodes call it."""
    clip = decode_clip(path, audio=False)
    return clip.info, clip.frames


@pytest.mark.parametrize("how", [decode, decode_as_the_node])
@pytest.mark.parametrize("aspect", list(CLIP_SIZES))
def test_frames_match_ffmpeg_bit_for_bit_for_each_aspect(clips, aspect, how):
    width, height = CLIP_SIZES[aspect]
    info, frames = how(clips[(aspect, True)])
    assert (info.width, info.height, info.fps) == (width, height, CLIP_FPS)
    assert frames.shape == (CLIP_SECONDS * CLIP_FPS, height, width, 3) and frames.dtype == np.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    reference = ffmpeg_rgb24(clips[(aspect, True)], width, height)
    assert np.array_equal(np.rint(frames * 255).astype(np.uint8), reference)


def test_audio_is_channels_by_samples_at_the_file_rate(clips):
    info = probe(clips[("16:9", True)])
    wave, rate = decode_audio(clips[("16:9", True)], info)
    assert rate == 44100 and wave.dtype == np.float32 and wave.shape[0] == 2
    assert abs(wave.shape[1] - CLIP_SECONDS * 44100) < 2048  # AAC pads by up to a frame
    assert 0.05 < np.abs(wave).max() <= 1.0  # the tone is there


def test_no_audio_track_gives_silence_of_the_video_length(clips):
    info = probe(clips[("9:16", False)])
    assert not info.has_audio
    wave, rate = decode_audio(clips[("9:16", False)], info)
    assert wave.shape[1] == CLIP_SECONDS * rate and not wave.any()


@pytest.mark.parametrize("codec,channels,rate", [("aac", 1, 48000), ("libmp3lame", 2, 32000), ("pcm_s16le", 6, 48000)])
def test_audio_layouts_and_formats(tmp_path, codec, channels, rate):
    clip = make_clip(tmp_path / "a.mov", 64, 64, seconds=1, audio=codec, channels=channels, rate=rate)
    info = probe(clip)
    wave, got_rate = decode_audio(clip, info)
    assert got_rate == rate and wave.shape[0] == channels
    assert abs(wave.shape[1] - rate) < 2400 and np.abs(wave).max() <= 1.0


def test_corrupt_file_raises_a_clear_error(tmp_path, clips):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 1000)
    with pytest.raises(MediaError, match="broken.mp4"):
        probe(broken)
    with pytest.raises(MediaError, match="broken.mp4"):
        decode_clip(broken)
    assert child_processes() == []  # no ffmpeg left running or unreaped


def child_processes() -> list[str]:
    import os

    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            found.append(stat.parent.name)
    return found


def test_cut_off_file_raises_or_gives_fewer_frames_never_garbage(tmp_path, clips):
    data = clips[("16:9", True)].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])  # faststart: header intact, media cut
    try:
        info, frames = decode(cut)
    except MediaError as exc:
        assert "cut.mp4" in str(exc)
    else:
        reference = ffmpeg_rgb24(clips[("16:9", True)], info.width, info.height)
        assert np.array_equal(np.rint(frames * 255).astype(np.uint8), reference[: len(frames)])


def ffmpeg_filtered(path, vf, width, height) -> np.ndarray:
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-vf", vf, "-fps_mode", "passthrough",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


@pytest.mark.parametrize("aspect", list(CLIP_SIZES))
def test_max_side_scales_in_the_decoder_keeping_the_aspect(clips, aspect):
    clip = decode_clip(clips[(aspect, False)], audio=False, options=DecodeOptions(max_side=160))
    width, height = CLIP_SIZES[aspect]
    scale = 160 / max(width, height)
    assert clip.frames.shape == (48, round(height * scale), round(width * scale), 3)
    reference = ffmpeg_filtered(clips[(aspect, False)], f"scale={clip.frames.shape[2]}:{clip.frames.shape[1]}"
                                ":flags=area", clip.frames.shape[2], clip.frames.shape[1])
    assert np.abs(np.rint(clip.frames * 255).astype(int) - reference.astype(int)).max() <= 1


@pytest.mark.parametrize("max_frames,every_nth,expected", [(0, 1, 48), (10, 1, 10), (0, 2, 24), (0, 5, 10),
                                                          (3, 4, 3), (100, 1, 48), (0, 48, 1), (0, 100, 1)])
def test_max_frames_and_every_nth_give_exact_counts(clips, max_frames, every_nth, expected):
    path = clips[("16:9", True)]
    clip = decode_clip(path, audio=False, options=DecodeOptions(max_frames=max_frames, every_nth=every_nth))
    assert clip.frames.shape[0] == expected
    everything = ffmpeg_rgb24(path, 320, 180)
    assert np.array_equal(np.rint(clip.frames * 255).astype(np.uint8), everything[::every_nth][:expected])


def test_options_refuse_nonsense_in_one_line():
    for bad in ({"every_nth": 0}, {"max_frames": -1}, {"max_side": 8}, {"max_side": 1.5}):
        with pytest.raises(InputError) as err:
            DecodeOptions(**bad)
        assert next(iter(bad)) in str(err.value)


def test_decode_that_would_not_fit_says_how_much_and_what_to_lower(clips):
    info = probe(clips[("16:9", True)])
    plan = plan_frames(info, DecodeOptions())
    with pytest.raises(MemoryShortError) as err:
        check_memory(plan, available=plan.nbytes // 2)
    message = str(err.value)
    assert "GiB" in message and "max_side" in message and "\n" not in message
    check_memory(plan, available=plan.nbytes + (1 << 30))


def test_decode_clip_gives_what_is_asked_only(clips):
    only_audio = decode_clip(clips[("1:1", True)], frames=False)
    assert only_audio.frames is None and only_audio.audio[0].shape[0] == 2
    only_frames = decode_clip(clips[("1:1", True)], audio=False)
    assert only_frames.audio is None and only_frames.frames.shape == (48, 240, 240, 3)


def test_frames_land_in_a_torch_tensor_without_a_copy(clips):
    import torch

    made = []

    def alloc(shape):
        made.append(torch.empty(shape, dtype=torch.float32))
        return made[-1]

    clip = decode_clip(clips[("16:9", True)], audio=False, alloc=alloc)
    assert clip.frames is made[0] and clip.frames.dtype == torch.float32 and float(clip.frames.max()) <= 1.0


def test_ffmpeg_never_sees_the_api_key(monkeypatch):
    monkeypatch.setenv("GMI_API_KEY", "gmi-key-that-must-stay-home")
    monkeypatch.setenv("GMI_SPEND_CAP_USD", "5")
    monkeypatch.setenv("PACK_TEST_KEPT", "1")
    names = run_child([sys.executable, "-c", "import os; print(' '.join(os.environ))"], text=True).stdout.split()
    assert "PACK_TEST_KEPT" in names and not [name for name in names if name.startswith("GMI_")]
    if sys.platform.startswith("linux"):  # a real ffmpeg too: an endless source keeps it alive to be looked at
        proc = start_child([ffmpeg_exe(), "-v", "error", "-nostdin", "-f", "lavfi", "-i", "anullsrc", "-f", "s16le",
                            "-"], stdout=subprocess.PIPE)
        try:
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
        assert b"PACK_TEST_KEPT=1" in environ and not [v for v in environ if v.startswith(b"GMI_")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_ffmpeg_dies_when_comfyui_is_killed():
    # A stand-in for ComfyUI starts a child as the pack does, then is killed outright: the child must not live on.
    host = ("import sys; sys.path.insert(0, sys.argv[1]); from packimport import load_pack; load_pack(); "
            "from gmi_video_pack.gmi.media import start_child; "
            "child = start_child([sys.executable, '-c', 'import signal; signal.pause()']); "
            "print(child.pid, flush=True); sys.stdin.read()")
    comfy = subprocess.Popen([sys.executable, "-c", host, str(Path(__file__).parent)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    pid = int(comfy.stdout.readline())
    exited = os.pidfd_open(pid)
    try:
        comfy.kill()
        comfy.wait()
        assert select.select([exited], [], [], 10)[0], "the child outlived its parent"
    finally:
        os.close(exited)
        comfy.stdin.close()
        comfy.stdout.close()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
