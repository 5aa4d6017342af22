"""Issue 14: Kling v3 image to video on the same engine: images checked before paying, journaled by a digest of their
pixels (never megabytes), the same pixels never paid twice, a lost submit matched by digest."""
from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import numpy as np
import pytest

from gmi_video_pack.gmi.errors import InputError, SubmitUnknownError
from gmi_video_pack.gmi.images import png_bytes, still_image
from gmi_video_pack.gmi.jobs import Journal, JobState
from gmi_video_pack.gmi.models import KLING_V3_I2V
from test_lifecycle import make_runner


def picture(width: int = 640, height: int = 360, seed: int = 0) -> np.ndarray:
    """A ComfyUI IMAGE batch of one: float32 [1, H, W, 3] in 0..1."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 1, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
    return (0.8 * base + 0.2 * rng.random((height, width, 3), dtype=np.float32))[None]


def i2v_payload(first, end=None, **values):
    images = [still_image(first, "image")] + ([still_image(end, "end_image")] if end is not None else [])
    base = {"prompt": "the fox turns its head", "image": images[0], "duration": 5, "sound": True}
    if end is not None:
        base["end_image"] = images[1]
    base.update(values)
    return KLING_V3_I2V.build_payload(base), images


async def run_i2v(gmi, fake_time, tmp_path, first, end=None, take=0, timeout_s=1800.0, **values):
    payload, images = i2v_payload(first, end, **values)
    return await make_runner(gmi, fake_time, tmp_path).run(KLING_V3_I2V, payload, take, timeout_s=timeout_s,
                                                           images=images)


def journal(tmp_path) -> Journal:
    return Journal(tmp_path / "user" / "jobs.sqlite3")


async def test_first_frame_and_end_frame_go_to_gmi_as_base64_png(gmi, fake_time, tmp_path, clips):
    first, end = picture(), picture(seed=1)
    result = await run_i2v(gmi, fake_time, tmp_path, first, end)
    (body,) = gmi.post_bodies
    sent = body["payload"]
    assert body["model"] == "kling-v3-image-to-video" and set(sent) == {"prompt", "image", "image_tail", "duration",
                                                                        "sound"}
    assert base64.b64decode(sent["image"]) == png_bytes((first[0] * 255).round().astype(np.uint8))
    assert sent["image"] != sent["image_tail"] and sent["duration"] == "5" and sent["sound"] == "on"
    assert result.path.read_bytes() == clips[("16:9", True)].read_bytes()


async def test_first_frame_only_sends_no_tail(gmi, fake_time, tmp_path):
    await run_i2v(gmi, fake_time, tmp_path, picture(360, 640))
    assert "image_tail" not in gmi.post_bodies[0]["payload"]


@pytest.mark.parametrize("size,words", [((200, 200), "at least 300 px"), ((1000, 300), "crop it closer"),
                                        ((300, 900), "crop it closer")])
async def test_an_image_kling_refuses_is_one_line_before_paying(gmi, fake_time, tmp_path, size, words):
    with pytest.raises(InputError) as err:
        await run_i2v(gmi, fake_time, tmp_path, picture(*size))
    assert words in str(err.value) and "\n" not in str(err.value) and gmi.api_requests == []


def test_an_empty_or_huge_image_is_one_line():
    with pytest.raises(InputError, match="not an RGB picture"):
        still_image(np.zeros((1, 0, 0, 3), np.float32))
    noise = np.random.default_rng(0).random((1, 2200, 2200, 3), dtype=np.float32)  # incompressible: ~14.5 MB PNG
    with pytest.raises(InputError, match="over Kling's 10 MB"):
        still_image(noise)
    with pytest.raises(InputError, match="is not connected"):
        KLING_V3_I2V.build_payload({"prompt": "x", "image": None})


async def test_the_same_pixels_in_a_new_tensor_are_the_same_paid_take(gmi, fake_time, tmp_path):
    first = picture()
    await run_i2v(gmi, fake_time, tmp_path, first)
    again = await run_i2v(gmi, fake_time, tmp_path, first.copy())  # another tensor, same content
    assert again.reused and len(gmi.post_bodies) == 1
    changed = first.copy()
    changed[0, 10, 10, 0] = 1.0 - changed[0, 10, 10, 0]  # one pixel
    await run_i2v(gmi, fake_time, tmp_path, changed)
    assert len(gmi.post_bodies) == 2


async def test_a_restart_while_polling_reattaches_without_paying(gmi, fake_time, tmp_path):
    gmi.never_finish = True
    task = asyncio.ensure_future(run_i2v(gmi, fake_time, tmp_path, picture()))
    while gmi.status_reads() < 2:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gmi.never_finish = False
    result = await run_i2v(gmi, fake_time, tmp_path, picture())
    assert result.request_id == gmi.created[0] and len(gmi.post_bodies) == 1


async def test_the_journal_keeps_digests_not_megabytes(gmi, fake_time, tmp_path):
    gmi.finish_on_post = True
    for take in range(20):
        await run_i2v(gmi, fake_time, tmp_path, picture(1280, 720, seed=take), take=take)
    sent = sum(len(body["payload"]["image"]) for body in gmi.post_bodies)
    path = tmp_path / "user" / "jobs.sqlite3"
    on_disk = sum(p.stat().st_size for p in path.parent.glob("jobs.sqlite3*"))
    print(f"\n20 image takes: {sent / 1e6:.1f} MB of Base64 sent, journal {on_disk / 1e3:.0f} kB")
    assert sent > 20e6 and on_disk < 300e3
    assert all(job.payload["image"].startswith("image:1280x720:") for job in journal(tmp_path).all())


async def test_a_lost_submit_of_an_image_job_is_matched_by_digest(gmi, fake_time, tmp_path, clips):
    gmi.listing = True
    gmi.faults["post_after_create"].append("reset")
    first = picture()
    with pytest.raises(SubmitUnknownError):
        await run_i2v(gmi, fake_time, tmp_path, first)
    gmi.add_console_job({"prompt": "the fox turns its head", "image": "elsewhere"})  # made then, not ours
    result = await run_i2v(gmi, fake_time, tmp_path, first)
    assert len(gmi.post_bodies) == 1 and result.request_id == gmi.created[0]
    assert journal(tmp_path).all()[0].state is JobState.SAVED


def test_the_output_size_follows_the_image_aspect():
    for size, expected in [((640, 360), (1280, 720)), ((360, 640), (720, 1280)), ((500, 480), (720, 720)),
                           ((1000, 560), (1280, 720))]:
        payload, _ = i2v_payload(picture(*size))
        assert KLING_V3_I2V.frame_size(payload) == expected


async def test_the_command_line_animates_an_image_file(gmi, tmp_path, clips):
    from test_cli_robust import cli_in, environment

    (tmp_path / "first.png").write_bytes(png_bytes((picture(360, 640)[0] * 255).round().astype(np.uint8)))
    gmi.finish_on_post = True
    code, out, err = await cli_in(tmp_path, "generate", "--model", "kling-v3-image-to-video", "--image", "first.png",
                                  "--prompt", "the fox turns", "--duration", "3", "--out", "o",
                                  env=environment(gmi, tmp_path))
    assert code == 0, err
    assert Path(out.strip().splitlines()[-1].split(" ", 1)[1]).read_bytes() == clips[("9:16", True)].read_bytes()
    assert gmi.post_bodies[0]["payload"]["image"] and "aspect_ratio" not in gmi.post_bodies[0]["payload"]
    code, out, err = await cli_in(tmp_path, "generate", "--model", "kling-v3-image-to-video", "--image", "nope.png",
                                  "--prompt", "x", "--out", "o", env=environment(gmi, tmp_path))
    assert code == 2 and "--image" in err and err.count("\n") == 1 and len(gmi.post_bodies) == 1


@pytest.mark.parametrize("decoder", ["ffmpeg", "pyav"])
async def test_a_rehearsal_starts_on_the_image_and_eases_into_the_end_frame(tmp_path, monkeypatch, decoder):
    from gmi_video_pack.gmi.client import GMIClient
    from gmi_video_pack.gmi.jobs import JobRunner, PollPolicy
    from gmi_video_pack.gmi.media import decode_clip
    from gmi_video_pack.gmi.media_plan import DecodeOptions
    from gmi_video_pack.gmi.rehearsal import REHEARSAL_KEY, RehearsalQueue

    monkeypatch.setenv("GMI_DECODER", decoder)
    red, blue = np.zeros((1, 640, 360, 3), np.float32), np.zeros((1, 640, 360, 3), np.float32)
    red[..., 0], blue[..., 2] = 0.9, 0.9
    payload, images = i2v_payload(red, blue, duration=3, sound=False)
    async with RehearsalQueue("take 0") as queue:
        runner = JobRunner(Journal(tmp_path / "jobs.sqlite3"), lambda: GMIClient(queue.base_url, REHEARSAL_KEY),
                           tmp_path / "out", poll=PollPolicy(first=0.05, cap=0.05))
        result = await runner.run(KLING_V3_I2V, payload, 0, timeout_s=120, rehearse=True, images=images)
    clip = decode_clip(result.path, audio=False, options=DecodeOptions(max_side=128))
    assert (clip.info.width, clip.info.height) == (720, 1280)  # portrait still: the 9:16 output
    first, last = clip.frames[0].mean(axis=(0, 1)), clip.frames[-1].mean(axis=(0, 1))
    assert first[0] > 0.7 > first[2] and last[2] > 0.7 > last[0]
