"""Issue 15's rehearsal: a storyboard rehearses free as a clip of the real size for its mode and aspect, each shot on
its own colour with a cut exactly where ``storyboard.spans`` says the shot starts (and, with the ffmpeg binary, the
shot's label and prompt written on it), so the shots output and Select Shot can be checked without paying."""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from gmi_video_pack.gmi import storyboard
from gmi_video_pack.gmi.client import GMIClient
from gmi_video_pack.gmi.jobs import Journal, JobRunner, JobState, PollPolicy
from gmi_video_pack.gmi.media import DecodeOptions, decode_clip, ffmpeg_exe
from gmi_video_pack.gmi.models import KLING_V3_OMNI
from gmi_video_pack.gmi.rehearsal import REHEARSAL_KEY, RehearsalQueue, render_clip
from gmi_video_pack.gmi.rehearsal_shots import shot_cards

LONG = ("a fox runs across a snowy field under a pale winter sun, its breath visible in the cold air, the camera "
        "tracking low alongside it as it leaps over a fallen branch and into the birch trees, where snow slides from "
        "a bough onto its back and it shakes itself dry in a burst of glittering powder before trotting on, ears up, "
        "towards the smoke of a distant cabin")


def omni(board: str, **values) -> dict:
    return KLING_V3_OMNI.build_payload({"storyboard": board, "sound": False, **values})


def assert_cuts(frames: np.ndarray, shots: list[dict]) -> None:
    """Each shot has a colour of its own, the mean colour of every frame tells its shot, and the frame at each
    boundary is wholly the next shot's (the one before it the previous shot's)."""
    mean = frames.reshape(len(frames), -1, 3).mean(axis=1)
    own = np.array([mean[s["first_frame"] + s["frame_count"] // 2] for s in shots])  # each shot's colour, mid-shot
    assert min(np.abs(a - b).max() for i, a in enumerate(own) for b in own[i + 1:]) > 0.2  # a cut you can't miss
    nearest = np.abs(mean[:, None, :] - own[None]).sum(axis=2).argmin(axis=1)  # the shot each frame's colour tells
    assert nearest.tolist() == [n for n, s in enumerate(shots) for _ in range(s["frame_count"])]
    for number, shot in enumerate(shots[1:], 1):
        cut = shot["first_frame"]
        assert nearest[cut] == number and nearest[cut - 1] == number - 1
        assert np.abs(mean[cut] - own[number]).max() < 0.05


def card_shade(frames: np.ndarray) -> np.ndarray:
    """Per frame: how dark the rows below a two-line card (label, a one-line prompt) are against the open picture;
    well under 1 where a longer prompt's card reaches down there (at 128 x 72). Medians: the sweeping bar is ignored."""
    luma = frames.mean(axis=3)
    return np.median(luma[:, 11:16, 6:40], axis=(1, 2)) / np.median(luma[:, 36:60, 60:100], axis=(1, 2))


@pytest.mark.parametrize("decoder", ["ffmpeg", "pyav"])
async def test_each_shot_has_its_own_colour_and_the_frame_at_each_boundary_is_the_next_shots(tmp_path, monkeypatch,
                                                                                               decoder):
    monkeypatch.setenv("GMI_DECODER", decoder)
    payload = omni("1 | a\n2 | b\n1 | c", mode="std", aspect_ratio="16:9")
    journal = Journal(tmp_path / "jobs.sqlite3")
    async with RehearsalQueue("take 0") as queue:
        runner = JobRunner(journal, lambda: GMIClient(queue.base_url, REHEARSAL_KEY), tmp_path / "out",
                           poll=PollPolicy(first=0.05, cap=0.05))
        result = await runner.run(KLING_V3_OMNI, payload, 0, timeout_s=120, rehearse=True)
    clip = decode_clip(result.path, audio=False, options=DecodeOptions(max_side=128))
    info = clip.info
    assert (info.width, info.height, info.fps, info.frame_count, info.has_audio) == (1280, 720, 24, 96, False)
    shots = storyboard.spans(payload["multi_prompt"], len(clip.frames), info.fps)
    assert [(s["first_frame"], s["frame_count"]) for s in shots] == [(0, 24), (24, 48), (72, 24)]

    assert_cuts(clip.frames, shots)
    (job,) = journal.all()
    assert job.rehearsal and job.state is JobState.SAVED and job.price is None


@pytest.mark.parametrize("decoder", ["ffmpeg", "pyav"])
def test_a_pro_portrait_storyboard_rehearses_at_1080x1920_with_its_sound(tmp_path, monkeypatch, decoder):
    monkeypatch.setenv("GMI_DECODER", decoder)
    payload = omni("2 | a\n1 | b", mode="pro", aspect_ratio="9:16", sound=True)
    assert KLING_V3_OMNI.frame_size(payload) == (1080, 1920)
    clip = decode_clip(render_clip(KLING_V3_OMNI, payload, "take 1", tmp_path / "clip.mp4"),
                       options=DecodeOptions(max_frames=1))
    assert (clip.info.width, clip.info.height, clip.info.frame_count) == (1080, 1920, 72)
    assert clip.frames.shape == (1, 1920, 1080, 3) and clip.info.sample_rate == 48000


def binary_draws_words(env: dict | None = None) -> bool:
    """The ffmpeg binary has drawtext and a font (else the rehearsal is made without words, by design)."""
    done = subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=size=64x64:duration=0.1",
                           "-vf", "drawtext=text=x", "-f", "null", "-"], capture_output=True, env=env)
    return done.returncode == 0


def test_the_words_change_with_the_shot_exactly_at_the_boundary(tmp_path, monkeypatch):
    if not binary_draws_words():
        pytest.skip("this ffmpeg binary cannot draw words (no drawtext or no font)")
    monkeypatch.setenv("GMI_DECODER", "ffmpeg")
    payload = omni(f"1 | a\n1 | {LONG}\n1 | c", mode="std", aspect_ratio="16:9")
    clip = decode_clip(render_clip(KLING_V3_OMNI, payload, "take 0", tmp_path / "clip.mp4"), audio=False,
                       options=DecodeOptions(max_side=128))
    shots = storyboard.spans(payload["multi_prompt"], len(clip.frames), clip.info.fps)
    long_card = [shots[1]["first_frame"] <= n < shots[2]["first_frame"] for n in range(len(clip.frames))]
    assert (card_shade(clip.frames) < 0.85).tolist() == long_card  # the long prompt's card: on shot 2's frames only
    assert_cuts(clip.frames, shots)


def test_a_binary_without_fonts_still_cuts_the_shots_only_without_words(tmp_path, monkeypatch):
    empty = tmp_path / "fonts.conf"
    empty.write_text('<?xml version="1.0"?>\n<fontconfig></fontconfig>\n')
    monkeypatch.setenv("FONTCONFIG_FILE", str(empty))  # fontconfig finds no font: drawtext cannot start
    if binary_draws_words(dict(os.environ)):
        pytest.skip("this ffmpeg binary finds a font without fontconfig")
    monkeypatch.setenv("GMI_DECODER", "ffmpeg")
    payload = omni(f"1 | a\n1 | {LONG}\n1 | c", mode="std", aspect_ratio="16:9")
    dest = render_clip(KLING_V3_OMNI, payload, "take 0", tmp_path / "clip.mp4")
    clip = decode_clip(dest, audio=False, options=DecodeOptions(max_side=128))
    assert clip.info.frame_count == 72 and (card_shade(clip.frames) > 0.95).all()  # no card anywhere
    assert_cuts(clip.frames, storyboard.spans(payload["multi_prompt"], 72, clip.info.fps))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "fonts.conf"]  # nothing half-written left


def test_each_card_names_its_shot_and_prompt_over_its_own_frames():
    multi = omni(f"2 | a cat\n3 | {LONG}\n1 | an owl")["multi_prompt"]
    cards = shot_cards(storyboard.spans(multi, 144, 24.0), "take 2", 1280, 720)
    assert [(first, last) for first, last, _ in cards] == [(0, 47), (48, 119), (120, 143)]
    assert cards[0][2] == "REHEARSAL - take 2 - shot 1 of 3\na cat"
    title, *lines = cards[1][2].split("\n")
    assert title == "REHEARSAL - take 2 - shot 2 of 3" and " ".join(lines) == LONG and len(lines) > 1
    assert shot_cards(storyboard.spans(multi, 144, 24.0), "", 1280, 720)[2][2] == "REHEARSAL - shot 3 of 3\nan owl"
