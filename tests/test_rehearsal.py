"""Rehearsal: the whole pipeline against the free local stand-in, with a clip shaped exactly like the real job's."""
from __future__ import annotations

import pytest

from gmi_video_pack.gmi.client import GMIClient
from gmi_video_pack.gmi.jobs import Journal, JobRunner, JobState, PollPolicy
from gmi_video_pack.gmi.media import DecodeOptions, decode_clip
from gmi_video_pack.gmi.models import KLING_V3_T2V
from gmi_video_pack.gmi.rehearsal import REHEARSAL_KEY, RehearsalQueue
from test_lifecycle import payload


@pytest.mark.parametrize("aspect,sound,size", [("16:9", True, (1280, 720)), ("9:16", False, (720, 1280))])
async def test_rehearsal_gives_the_real_jobs_shape_and_costs_nothing(tmp_path, aspect, sound, size):
    journal = Journal(tmp_path / "jobs.sqlite3")
    async with RehearsalQueue("take 3") as queue:
        runner = JobRunner(journal, lambda: GMIClient(queue.base_url, REHEARSAL_KEY), tmp_path / "out",
                           poll=PollPolicy(first=0.05, cap=0.05))
        result = await runner.run(KLING_V3_T2V, payload(duration=3, aspect_ratio=aspect, sound=sound), 3,
                                  timeout_s=120, rehearse=True)
    clip = decode_clip(result.path, options=DecodeOptions(max_frames=2))  # the shape is what matters here
    assert (clip.info.width, clip.info.height) == size and clip.info.fps == 24 and clip.info.frame_count == 72
    assert clip.info.has_audio is sound
    wave, rate = clip.audio
    assert wave.shape[1] == pytest.approx(3 * rate, abs=2048) and (bool(abs(wave).max() > 0.05) is sound)
    (job,) = journal.all()
    assert job.rehearsal and job.state is JobState.SAVED and job.price is None and job.take == 3
    assert "rehearsal" in result.path.name

