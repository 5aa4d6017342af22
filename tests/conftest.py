"""Fixtures: the pack imported without ComfyUI, real MP4 clips made with ffmpeg, a fake GMI on loopback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from packimport import load_pack  # noqa: E402

load_pack()

from fakegmi import FakeGMI, FakeTime  # noqa: E402
from gmi_video_pack.gmi.media import ffmpeg_exe  # noqa: E402

# Small stand-ins for Kling's 1280x720 / 720x1280 / 720x720: the logic is the same, the suite stays fast.
CLIP_SIZES = {"16:9": (320, 180), "9:16": (180, 320), "1:1": (240, 240)}
CLIP_SECONDS = 2
CLIP_FPS = 24


def make_clip(path: Path, width: int, height: int, *, seconds: float = CLIP_SECONDS, fps: int = CLIP_FPS,
              audio: str | None = "aac", channels: int = 2, rate: int = 44100) -> Path:
    """A real H.264 MP4 (moving test pattern), with an AAC (or other) tone track unless ``audio`` is None."""
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={rate}"]
    cmd += ["-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio:
        cmd += ["-c:a", audio, "-ac", str(channels), "-ar", str(rate)]
    cmd += ["-movflags", "+faststart", str(path)]
    subprocess.run(cmd, check=True)
    return path


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[tuple[str, bool], Path]:
    """(aspect_ratio, sound) -> a clip of that shape, sound on = AAC stereo track, sound off = no audio track."""
    folder = tmp_path_factory.mktemp("clips")
    made = {}
    for aspect, (w, h) in CLIP_SIZES.items():
        tag = aspect.replace(":", "x")
        made[(aspect, True)] = make_clip(folder / f"{tag}_sound.mp4", w, h)
        made[(aspect, False)] = make_clip(folder / f"{tag}_silent.mp4", w, h, audio=None)
    return made


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def gmi(clips, fake_time):
    server = FakeGMI(clips, wall=fake_time.wall)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch):
    monkeypatch.delenv("GMI_API_KEY", raising=False)
    monkeypatch.delenv("GMI_BASE_URL", raising=False)
