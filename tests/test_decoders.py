"""Decoding with what is there: the ffmpeg binary (imageio-ffmpeg's or one on PATH) or PyAV, chosen once, giving
the same frames (ffmpeg's rgb24 bytes), the same facts and the same audio; and one line when there is none."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CLIP_FPS, CLIP_SECONDS, CLIP_SIZES, make_clip
from gmi_video_pack.gmi.errors import MediaError
from gmi_video_pack.gmi.media import (Backend, DecodeOptions, decode_audio, decode_clip, decode_frames, decoder,
                                      ffmpeg_exe, probe, verify_video)

FFMPEG = ffmpeg_exe()  # the reference binary, found before any test hides it
HAVE_PYAV = importlib.util.find_spec("av") is not None
needs_pyav = pytest.mark.skipif(not HAVE_PYAV, reason="PyAV is not installed (pip install -r requirements-dev.txt)")
BACKENDS = ["ffmpeg", pytest.param("pyav", marks=needs_pyav)]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> str:
    monkeypatch.setenv("GMI_DECODER", request.param)
    return request.param


def use(monkeypatch, backend: str) -> None:
    monkeypatch.setenv("GMI_DECODER", backend)


def ffmpeg_rgb24(path: Path, vf: str | None = None) -> np.ndarray:
    """What the ffmpeg binary itself gives: upright rgb24 frames, shaped by probing its own output size."""
    cmd = [FFMPEG, "-v", "error", "-i", str(path)] + (["-vf", vf] if vf else [])
    raw = subprocess.run(cmd + ["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    size = subprocess.run(cmd + ["-frames:v", "1", "-f", "image2pipe", "-c:v", "ppm", "-"],
                          capture_output=True, check=True).stdout.split(b"\n")[1].split()
    width, height = int(size[0]), int(size[1])
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def as_floats(rgb: np.ndarray) -> np.ndarray:
    return np.multiply(rgb, np.float32(1.0 / 255.0), dtype=np.float32)


def remux(src: Path, dest: Path, *before_input: str) -> Path:
    subprocess.run([FFMPEG, "-v", "error", "-y", *before_input, "-i", str(src), "-c", "copy", str(dest)], check=True)
    return dest


def encode(dest: Path, *video_args: str, size: str = "96x54", audio: list[str] | None = None,
           rate: str = "24") -> Path:
    """A 1 s clip of the moving test pattern, encoded with ``video_args`` (and ``audio`` args for a tone)."""
    cmd = [FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    cmd += ["-t", "1", "-c:v", "libx264", "-preset", "ultrafast", *video_args, *(audio or []), str(dest)]
    subprocess.run(cmd, check=True)
    return dest


@pytest.fixture(scope="module")
def odd_clips(tmp_path_factory) -> dict[str, Path]:
    """Clips that differ from GMI's usual output in the ways a decoder can get wrong."""
    folder = tmp_path_factory.mktemp("odd")
    plain = encode(folder / "plain.mp4", "-pix_fmt", "yuv420p")
    return {
        "bt709 tagged": encode(folder / "bt709.mp4", "-pix_fmt", "yuv420p", "-colorspace", "bt709",
                               "-color_primaries", "bt709", "-color_trc", "bt709"),
        "full range": encode(folder / "full.mp4", "-pix_fmt", "yuvj420p"),
        "10-bit": encode(folder / "ten.mp4", "-pix_fmt", "yuv420p10le"),
        "4:4:4": encode(folder / "444.mp4", "-pix_fmt", "yuv444p"),
        "ntsc b-frames": encode(folder / "ntsc.mp4", "-preset", "medium", "-bf", "3", "-pix_fmt", "yuv420p",
                                rate="24000/1001", audio=["-c:a", "aac"]),
        "rotated 90": remux(plain, folder / "rot90.mp4", "-display_rotation", "90"),
        "rotated 180": remux(plain, folder / "rot180.mp4", "-display_rotation", "180"),
        "rotated 270": remux(plain, folder / "rot270.mp4", "-display_rotation", "270"),
        "mirrored": remux(plain, folder / "hflip.mp4", "-display_hflip"),
    }


# --- the same frames, facts and sound on every decoder -------------------------------------------------------------

@pytest.mark.parametrize("aspect", list(CLIP_SIZES))
def test_frames_are_ffmpegs_rgb24_bytes_on_every_decoder(clips, backend, aspect):
    clip = decode_clip(clips[(aspect, True)], audio=False)
    width, height = CLIP_SIZES[aspect]
    assert clip.frames.shape == (CLIP_SECONDS * CLIP_FPS, height, width, 3) and clip.frames.dtype == np.float32
    assert np.array_equal(clip.frames, as_floats(ffmpeg_rgb24(clips[(aspect, True)])))


@pytest.mark.parametrize("kind", ["bt709 tagged", "full range", "10-bit", "4:4:4", "ntsc b-frames", "rotated 90",
                                  "rotated 180", "rotated 270", "mirrored"])
def test_colour_range_depth_and_rotation_come_out_as_ffmpeg_gives_them(odd_clips, backend, kind):
    clip = decode_clip(odd_clips[kind], audio=False)
    reference = ffmpeg_rgb24(odd_clips[kind])
    assert (clip.info.height, clip.info.width) == reference.shape[1:3]
    assert np.array_equal(clip.frames, as_floats(reference))


@pytest.mark.parametrize("options,vf", [
    (DecodeOptions(max_side=160), None),
    (DecodeOptions(every_nth=3), "select='not(mod(n\\,3))'"),
    (DecodeOptions(max_frames=5), None),
    (DecodeOptions(max_side=100, every_nth=2, max_frames=7), None),
])
@pytest.mark.parametrize("aspect", ["16:9", "9:16"])
def test_max_side_every_nth_and_max_frames_give_the_same_frames_on_every_decoder(clips, monkeypatch, aspect, options,
                                                                                 vf):
    decoded = {}
    for name in ("ffmpeg", "pyav") if HAVE_PYAV else ("ffmpeg",):
        use(monkeypatch, name)
        decoded[name] = decode_clip(clips[(aspect, False)], audio=False, options=options).frames
    first = decoded["ffmpeg"]
    assert first.shape[0] == min(options.max_frames or 48, -(-48 // options.every_nth))
    assert max(first.shape[1:3]) == (options.max_side or max(CLIP_SIZES[aspect]))
    for frames in decoded.values():
        assert frames.shape == first.shape and np.array_equal(frames, first)
    if vf:  # and the unscaled ones are ffmpeg's own bytes
        assert np.array_equal(first, as_floats(ffmpeg_rgb24(clips[(aspect, False)], vf)))


@needs_pyav
def test_probe_reports_the_same_facts_on_every_decoder(clips, odd_clips, monkeypatch):
    for path in [clips[("16:9", True)], clips[("9:16", False)], odd_clips["ntsc b-frames"], odd_clips["10-bit"],
                 odd_clips["rotated 90"]]:
        use(monkeypatch, "ffmpeg")
        by_binary = probe(path)
        use(monkeypatch, "pyav")
        assert probe(path) == by_binary, path.name
    assert (by_binary.width, by_binary.height) == (54, 96)  # the rotated clip, upright


@needs_pyav
@pytest.mark.parametrize("codec,channels,rate,suffix", [("aac", 2, 44100, "mp4"), ("aac", 1, 48000, "mp4"),
                                                       ("libmp3lame", 2, 32000, "mp4"), ("pcm_s16le", 6, 48000, "mov")])
def test_audio_is_the_same_on_every_decoder(tmp_path, monkeypatch, codec, channels, rate, suffix):
    clip = make_clip(tmp_path / f"a.{suffix}", 64, 64, seconds=1.5, audio=codec, channels=channels, rate=rate)
    use(monkeypatch, "ffmpeg")
    wave, got_rate = decode_audio(clip, probe(clip))
    use(monkeypatch, "pyav")
    other, other_rate = decode_audio(clip, probe(clip))
    assert (got_rate, other_rate) == (rate, rate) and wave.shape[0] == channels
    assert other.shape == wave.shape and other.dtype == np.float32
    assert np.abs(other - wave).max() <= 1e-6 and np.abs(wave).max() > 0.05


def test_no_audio_track_gives_silence_of_the_clip_on_every_decoder(clips, backend):
    clip = decode_clip(clips[("1:1", False)], frames=False)
    wave, rate = clip.audio
    assert wave.shape == (2, CLIP_SECONDS * rate) and not wave.any()


def test_cut_off_download_or_a_page_fails_the_check_on_every_decoder(clips, tmp_path, backend):
    whole = clips[("16:9", True)]  # faststart: the index first, so a cut keeps it and loses media
    verify_video(whole)
    data = whole.read_bytes()
    slow = remux(whole, tmp_path / "index_last.mp4")  # no faststart: the index last, lost in any cut
    cuts = {"cut.mp4": data[: len(data) * 2 // 3], "nearly.mp4": data[:-200],
            "index_cut.mp4": slow.read_bytes()[: slow.stat().st_size // 3],
            "page.mp4": b"<html><body>AccessDenied</body></html>"}
    for name, content in cuts.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(MediaError) as err:
            verify_video(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)


def test_cut_off_file_decodes_to_fewer_frames_or_an_error_never_garbage(clips, tmp_path, backend):
    data = clips[("16:9", True)].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    try:
        clip = decode_clip(cut, audio=False)
    except MediaError as exc:
        assert "cut.mp4" in str(exc)
    else:
        reference = as_floats(ffmpeg_rgb24(clips[("16:9", True)]))
        assert 0 < len(clip.frames) < len(reference) and np.array_equal(clip.frames, reference[: len(clip.frames)])


def test_corrupt_file_is_one_clear_line_on_every_decoder(tmp_path, backend):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 1000)
    with pytest.raises(MediaError, match="broken.mp4") as err:
        decode_clip(broken)
    assert "\n" not in str(err.value)


def test_stop_request_ends_decoding_on_every_decoder(clips, backend):
    info = probe(clips[("16:9", True)])
    out = np.empty((info.frame_count, info.height, info.width, 3), np.float32)

    class Stop(Exception):
        pass

    def check():
        raise Stop()

    with pytest.raises(Stop):
        decode_frames(clips[("16:9", True)], info, out, check=check)


# --- which decoder, and one line when there is none ----------------------------------------------------------------

def hide(monkeypatch, tmp_path, *modules: str, ffmpeg_on_path: str | None = None) -> Path:
    """As a ComfyUI without ``modules``: PATH holds only a folder with, if given, an ``ffmpeg`` of our choosing.
    A new PATH is also a new choice: decoder() remembers its pick per GMI_DECODER and PATH."""
    monkeypatch.delenv("GMI_DECODER", raising=False)
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails, as when it is not installed
    folder = tmp_path / "bin"
    folder.mkdir()
    if ffmpeg_on_path == "real":
        (folder / "ffmpeg").symlink_to(FFMPEG)
    elif ffmpeg_on_path is not None:
        (folder / "ffmpeg").write_text("#!/bin/sh\n" + ffmpeg_on_path + "\n")
        (folder / "ffmpeg").chmod(0o755)
    monkeypatch.setenv("PATH", str(folder))
    return folder


def test_auto_choice_is_imageio_ffmpegs_binary_when_installed(monkeypatch):
    monkeypatch.delenv("GMI_DECODER", raising=False)
    chosen = decoder()
    assert chosen.backend is Backend.FFMPEG and chosen.path == FFMPEG and "imageio-ffmpeg" in str(chosen)


def test_without_imageio_ffmpeg_an_ffmpeg_on_path_decodes(clips, monkeypatch, tmp_path):
    folder = hide(monkeypatch, tmp_path, "imageio_ffmpeg", ffmpeg_on_path="real")
    chosen = decoder()
    assert chosen.backend is Backend.FFMPEG and chosen.path == str(folder / "ffmpeg")
    clip = decode_clip(clips[("9:16", True)])
    assert np.array_equal(clip.frames, as_floats(ffmpeg_rgb24(clips[("9:16", True)])))


@needs_pyav
def test_without_any_ffmpeg_pyav_decodes_the_same_frames_and_sound(clips, monkeypatch, tmp_path):
    use(monkeypatch, "ffmpeg")
    sound = decode_clip(clips[("16:9", True)], frames=False).audio[0]
    hide(monkeypatch, tmp_path, "imageio_ffmpeg")
    assert decoder().backend is Backend.PYAV
    clip = decode_clip(clips[("16:9", True)])
    assert np.array_equal(clip.frames, as_floats(ffmpeg_rgb24(clips[("16:9", True)])))
    assert clip.audio[0].shape == sound.shape and np.abs(clip.audio[0] - sound).max() <= 1e-6


@needs_pyav
@pytest.mark.parametrize("script,why", [("exit 1", "does not run"),
                                        ("echo 'ffmpeg version 4.4.2'; echo '-vsync  video sync method'",
                                         "too old")])
def test_an_ffmpeg_on_path_that_fails_or_is_too_old_is_passed_over(monkeypatch, tmp_path, script, why):
    import av

    hide(monkeypatch, tmp_path, "imageio_ffmpeg", "av", ffmpeg_on_path=script)
    with pytest.raises(MediaError, match=why):  # the reason is in the line when nothing else works
        decoder()
    monkeypatch.setitem(sys.modules, "av", av)
    assert decoder().backend is Backend.PYAV


def test_no_decoder_at_all_is_one_line_that_says_how_to_fix_it(clips, monkeypatch, tmp_path):
    hide(monkeypatch, tmp_path, "imageio_ffmpeg", "av")
    with pytest.raises(MediaError) as err:
        decoder()
    message = str(err.value)
    assert "\n" not in message and message.startswith("No video decoder")
    assert f"{sys.executable} -m pip install -r " in message and "requirements.txt" in message
    assert "ffmpeg on PATH" in message
    with pytest.raises(MediaError, match="No video decoder"):  # and what a node would show, decoding
        decode_clip(clips[("16:9", True)])


def test_gmi_decoder_forces_a_decoder(monkeypatch):
    use(monkeypatch, "ffmpeg")
    assert decoder().backend is Backend.FFMPEG
    if HAVE_PYAV:
        use(monkeypatch, "pyav")
        assert decoder().backend is Backend.PYAV and decoder().path is None


def test_gmi_decoder_with_a_wrong_value_is_one_line(monkeypatch):
    use(monkeypatch, "vlc")
    with pytest.raises(MediaError) as err:
        decoder()
    assert "GMI_DECODER" in str(err.value) and "ffmpeg or pyav" in str(err.value) and "\n" not in str(err.value)


def test_gmi_decoder_pyav_without_pyav_says_how_to_install_it(monkeypatch, tmp_path):
    hide(monkeypatch, tmp_path, "av")
    use(monkeypatch, "pyav")
    with pytest.raises(MediaError, match="pip install av") as err:
        decoder()
    assert "\n" not in str(err.value)


def test_gmi_decoder_ffmpeg_without_a_binary_says_so(monkeypatch, tmp_path):
    hide(monkeypatch, tmp_path, "imageio_ffmpeg")
    use(monkeypatch, "ffmpeg")
    with pytest.raises(MediaError, match="GMI_DECODER=ffmpeg but there is no working ffmpeg") as err:
        decoder()
    assert "\n" not in str(err.value)


def test_a_binary_removed_while_running_is_replaced_by_what_is_there(tmp_path, monkeypatch):
    import shutil

    from gmi_video_pack.gmi import media as pack_media

    binary = tmp_path / "bin" / "ffmpeg"
    binary.parent.mkdir()
    shutil.copy(pack_media.ffmpeg_exe(), binary)
    monkeypatch.setenv("PATH", str(binary.parent))
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # only the PATH binary, then PyAV
    monkeypatch.delenv("GMI_DECODER", raising=False)
    assert pack_media.decoder().path == str(binary)
    binary.unlink()  # e.g. an update removed it while ComfyUI ran
    assert pack_media.decoder().backend is pack_media.Backend.PYAV
