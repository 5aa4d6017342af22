"""Rehearsal in a ComfyUI that has PyAV but no ffmpeg program: the clip is made with PyAV, shaped exactly like the
real job's, and the whole free run works through the same client, journal, download and decode."""
from __future__ import annotations

import pytest

av = pytest.importorskip("av", reason="PyAV is not installed (pip install -r requirements-dev.txt)")

import numpy as np  # noqa: E402

from gmi_video_pack.gmi.client import GMIClient  # noqa: E402
from gmi_video_pack.gmi.errors import MediaError  # noqa: E402
from gmi_video_pack.gmi.jobs import Journal, JobRunner, JobState, PollPolicy  # noqa: E402
from gmi_video_pack.gmi.media import Backend, DecodeOptions, decode_clip, decoder, probe  # noqa: E402
from gmi_video_pack.gmi.models import KLING_V3_T2V  # noqa: E402
from gmi_video_pack.gmi.rehearsal import REHEARSAL_KEY, RehearsalQueue, render_clip  # noqa: E402
from test_lifecycle import payload  # noqa: E402

SECONDS = 3


@pytest.fixture(autouse=True)
def pyav_only(monkeypatch):
    """As a ComfyUI without the binary. decoder() remembers its pick per GMI_DECODER value, so no cache to clear."""
    monkeypatch.setenv("GMI_DECODER", "pyav")
    assert decoder().backend is Backend.PYAV


@pytest.mark.parametrize("sound", [True, False], ids=["sound", "silent"])
@pytest.mark.parametrize("aspect", ["16:9", "9:16", "1:1"])
def test_pyav_rehearsal_clip_has_the_real_jobs_size_fps_length_and_sound(tmp_path, aspect, sound):
    dest = tmp_path / "clip.mp4"
    assert render_clip(KLING_V3_T2V, payload(duration=SECONDS, aspect_ratio=aspect, sound=sound), "take 1",
                       dest) == dest
    info = probe(dest)
    assert (info.width, info.height) == KLING_V3_T2V.frame_sizes[aspect]
    assert info.fps == 24 and info.frame_count == SECONDS * 24 and info.duration == SECONDS
    assert (info.sample_rate, info.channels) == ((48000, 2) if sound else (None, None))
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # nothing half-written left beside it


def test_pyav_rehearsal_pictures_move_and_the_tone_is_440_hz_for_the_whole_clip(tmp_path):
    dest = render_clip(KLING_V3_T2V, payload(duration=SECONDS, aspect_ratio="1:1", sound=True), "take 1",
                       tmp_path / "clip.mp4")
    clip = decode_clip(dest, options=DecodeOptions(every_nth=12, max_side=180))
    frames = clip.frames
    assert len(frames) == SECONDS * 2
    assert all(np.abs(a - b).mean() > 0.01 for a, b in zip(frames, frames[1:]))  # every half second looks new
    wave, rate = clip.audio
    assert wave.shape == (2, SECONDS * rate) and np.abs(wave[0] - wave[1]).max() < 0.01  # the same tone twice
    spectrum = np.abs(np.fft.rfft(wave[0]))
    assert np.fft.rfftfreq(wave.shape[1], 1 / rate)[spectrum.argmax()] == pytest.approx(440, abs=1)
    assert np.abs(wave[0, :rate // 10]).max() > 0.05 and np.abs(wave[0, -rate // 10:]).max() > 0.05


async def test_pyav_rehearsal_runs_end_to_end_and_costs_nothing(tmp_path):
    journal = Journal(tmp_path / "jobs.sqlite3")
    async with RehearsalQueue("take 3") as queue:
        runner = JobRunner(journal, lambda: GMIClient(queue.base_url, REHEARSAL_KEY), tmp_path / "out",
                           poll=PollPolicy(first=0.05, cap=0.05))
        result = await runner.run(KLING_V3_T2V, payload(duration=SECONDS, aspect_ratio="9:16", sound=True), 3,
                                  timeout_s=120, rehearse=True)
    clip = decode_clip(result.path, options=DecodeOptions(max_frames=2))
    assert (clip.info.width, clip.info.height, clip.info.fps, clip.info.frame_count) == (720, 1280, 24, 72)
    wave, rate = clip.audio
    assert rate == 48000 and wave.shape == (2, SECONDS * rate) and np.abs(wave).max() > 0.05
    (job,) = journal.all()
    assert job.rehearsal and job.state is JobState.SAVED and job.price is None and job.take == 3
    assert "rehearsal" in result.path.name


def test_pyav_without_an_h264_encoder_says_in_one_line_what_to_do(tmp_path, monkeypatch):
    real = av.codec.Codec

    def without_libx264(name, mode="r"):
        if name == "libx264" and mode == "w":
            raise av.codec.codec.UnknownCodecError(name)
        return real(name, mode)

    monkeypatch.setattr(av.codec, "Codec", without_libx264)  # as a PyAV built without x264
    with pytest.raises(MediaError, match="no libx264 encoder") as err:
        render_clip(KLING_V3_T2V, payload(duration=SECONDS), "take 1", tmp_path / "clip.mp4")
    assert "rehearse" in str(err.value) and "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())
