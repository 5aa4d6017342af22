"""Issue 15, the engine's part: Kling v3 Omni storyboards checked before paying, sent as Kling's multi_prompt, the same
storyboard and take never paid twice, and each shot's place in the delivered frames."""
from __future__ import annotations

import pytest

from gmi_video_pack.gmi.errors import InputError
from gmi_video_pack.gmi.models import KLING_V3_OMNI
from gmi_video_pack.gmi.storyboard import parse, spans
from test_lifecycle import make_runner

THREE = "2 | a fox wakes in its den\n3 | it steps into the snow\n# a note line\n\n2 | it runs toward the camera"


def omni(board=THREE, **values):
    return KLING_V3_OMNI.build_payload({"storyboard": board, **values})


@pytest.mark.parametrize("count", [1, 3, 6])
async def test_a_storyboard_of_1_3_or_6_shots_is_one_paid_job(gmi, fake_time, tmp_path, count):
    seconds = [15] if count == 1 else [1 + (i % 2) for i in range(count)]
    board = "\n".join(f"{s} | shot {i + 1} of {count}" for i, s in enumerate(seconds))
    result = await make_runner(gmi, fake_time, tmp_path).run(KLING_V3_OMNI, omni(board, mode="pro"), 0, timeout_s=600)
    (body,) = gmi.post_bodies
    sent = body["payload"]
    assert body["model"] == "kling-v3-omni" and sent["multi_shot"] is True and sent["shot_type"] == "customize"
    assert [s["index"] for s in sent["multi_prompt"]] == list(range(1, count + 1))
    assert sent["duration"] == str(sum(seconds)) and sent["mode"] == "pro" and sent["sound"] == "off"
    assert result.path.is_file()


@pytest.mark.parametrize("board,words", [
    ("\n".join(f"2 | shot {i}" for i in range(7)), "use 1 to 6"),
    ("3 | " + "x" * 513, "at most 512"),
    ("8 | one\n8 | two", "3-15 s"),
    ("0 | nothing\n3 | something", "at least 1 s"),
    ("three | a fox", "whole number"),
    ("a fox without seconds", "seconds | prompt"),
])
async def test_a_storyboard_kling_refuses_is_one_line_before_paying(gmi, fake_time, tmp_path, board, words):
    with pytest.raises(InputError) as err:
        await make_runner(gmi, fake_time, tmp_path).run(KLING_V3_OMNI, omni(board), 0, timeout_s=600)
    assert words in str(err.value) and "\n" not in str(err.value) and gmi.api_requests == []


async def test_the_same_storyboard_and_take_is_reused_after_a_restart(gmi, fake_time, tmp_path):
    await make_runner(gmi, fake_time, tmp_path).run(KLING_V3_OMNI, omni(), 0, timeout_s=600)
    again = await make_runner(gmi, fake_time, tmp_path).run(KLING_V3_OMNI, omni(THREE + "\n"), 0, timeout_s=600)
    assert again.reused and len(gmi.post_bodies) == 1


def test_shots_lie_where_their_seconds_put_them_in_the_real_frames():
    board = omni()["multi_prompt"]
    shots = spans(board, frame_count=169, fps=24.0)  # 7 s asked; the file has 169 frames, not 168
    assert [s["first_frame"] for s in shots] == [0, 48, 120]
    assert sum(s["frame_count"] for s in shots) == 169 and shots[-1]["end"] == pytest.approx(169 / 24)
    assert shots[1]["prompt"] == "it steps into the snow" and shots[1]["start"] == 2.0


def test_the_price_and_size_follow_mode_and_sound():
    std, pro = omni(), omni(mode="pro", sound=True)
    assert KLING_V3_OMNI.frame_size(std) == (1280, 720) and KLING_V3_OMNI.frame_size(pro) == (1920, 1080)
    assert KLING_V3_OMNI.estimate_price(pro).amount > KLING_V3_OMNI.estimate_price(std).amount
    assert "unconfirmed" in KLING_V3_OMNI.estimate_price(std).source


def test_a_list_of_shots_reads_like_the_text():
    assert parse([{"prompt": "a", "duration": 3}, {"prompt": "b", "duration": "2"}]) == parse("3 | a\n2 | b")


async def test_the_command_line_generates_a_storyboard_from_a_file(gmi, tmp_path):
    from test_cli_robust import cli_in, environment

    (tmp_path / "shots.txt").write_text(THREE, encoding="utf-8")
    gmi.finish_on_post = True
    code, out, err = await cli_in(tmp_path, "generate", "--model", "kling-v3-omni", "--storyboard", "shots.txt",
                                  "--mode", "pro", "--out", "o", env=environment(gmi, tmp_path))
    assert code == 0, err
    assert len(gmi.post_bodies[0]["payload"]["multi_prompt"]) == 3 and gmi.post_bodies[0]["payload"]["mode"] == "pro"
    (tmp_path / "bad.txt").write_text("9 | one\n9 | two", encoding="utf-8")
    code, _, err = await cli_in(tmp_path, "generate", "--model", "kling-v3-omni", "--storyboard", "bad.txt", "--out",
                                "o", env=environment(gmi, tmp_path))
    assert code == 2 and "3-15 s" in err and len(gmi.post_bodies) == 1


def test_select_shot_takes_one_shots_frames_and_its_span_of_the_sound():
    from gmi_video_pack.gmi.storyboard import select

    board = omni()["multi_prompt"]
    shots = {"fps": 24.0, "frame_count": 168, "shots": spans(board, 168, 24.0)}
    frames, sound = select(shots, 2, 168, 48000)
    assert (frames.start, frames.stop) == (48, 120) and (sound.start, sound.stop) == (96000, 240000)
    with pytest.raises(InputError, match="use 1-3"):
        select(shots, 4, 168, 48000)
    with pytest.raises(InputError, match="storyboard node's own frames"):
        select(shots, 1, 84, 48000)  # frames from elsewhere (e.g. every_nth changed downstream)


async def test_reference_images_go_as_image_list_and_prompts_may_name_them(gmi, fake_time, tmp_path):
    import base64

    from gmi_video_pack.gmi.images import still_image
    from test_image_to_video import picture

    fox, den = still_image(picture(seed=1)), still_image(picture(seed=2))
    board = "3 | <<<image_1>>> wakes in <<<image_2>>>\n2 | <<<image_1>>> runs"
    payload = KLING_V3_OMNI.build_payload({"storyboard": board, "reference_images": [fox, den]})
    assert payload["image_list"] == [{"image_url": fox.ref}, {"image_url": den.ref}]  # the journal: references only
    await make_runner(gmi, fake_time, tmp_path).run(KLING_V3_OMNI, payload, 0, timeout_s=600, images=[fox, den])
    sent = gmi.post_bodies[0]["payload"]["image_list"]
    assert [base64.b64decode(item["image_url"])[:4] for item in sent] == [b"\x89PNG"] * 2
    with pytest.raises(InputError, match="refers to <<<image_3>>>"):
        KLING_V3_OMNI.build_payload({"storyboard": "3 | <<<image_3>>> sleeps", "reference_images": [fox, den]})
