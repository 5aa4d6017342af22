"""Which decoder to use: the ffmpeg binary (imageio-ffmpeg, the pack's choice) or PyAV, on the same clip.

    python bench/decoders.py CLIP [--repeat 5]

Both decode into the same float32 tensor, whose pages are made present first, so the figures compare the decoders
and not the cost of fresh memory (which bench/decode.py includes, and which on a VM varies from run to run).
Needs PyAV installed (`pip install av`; every ComfyUI has it) for the second row.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from packimport import load_pack  # noqa: E402

load_pack()

from gmi_video_pack.gmi.media import decode_frames, probe  # noqa: E402


def with_ffmpeg(path: Path, out: np.ndarray) -> int:
    return decode_frames(path, probe(path), out)


def with_pyav(path: Path, out: np.ndarray) -> int:
    import av

    scale = np.float32(1.0 / 255.0)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # H.264 decodes on one thread unless asked
        done = 0
        for frame in container.decode(stream):
            if done == len(out):
                break
            np.multiply(frame.to_ndarray(format="rgb24"), scale, out=out[done])
            done += 1
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    info = probe(args.clip)
    out = np.ones((info.frame_count, info.height, info.width, 3), np.float32)  # pages present from here on
    decoders = {"ffmpeg binary (imageio-ffmpeg)": with_ffmpeg, "PyAV": with_pyav}
    times: dict[str, list[float]] = {name: [] for name in decoders}
    for _ in range(args.repeat):
        for name, decode in decoders.items():
            out.fill(2.0)
            start = time.perf_counter()
            count = decode(args.clip, out)
            times[name].append(time.perf_counter() - start)
            assert count == info.frame_count and float(out.max()) <= 1.0, name
    for name, values in times.items():
        print(f"{name:32s} median {statistics.median(values):.2f}s  min {min(values):.2f}s  max {max(values):.2f}s "
              f"({info.frame_count} frames {info.width}x{info.height})")


if __name__ == "__main__":
    main()
