"""Each decoder the pack can use (the ffmpeg binary, PyAV), timed through the pack's own decode on the same clip.

    python bench/decoders.py CLIP [--repeat 5] [--max-side S] [--every-nth K] [--max-frames N]

Each decoder is forced with GMI_DECODER, as a user would, and runs media.probe, media.decode_frames and
media.decode_audio; runs alternate between decoders. Frames go into one float32 tensor whose pages are made present
first, so the figures compare the decoders and not the cost of fresh memory (bench/decode.py includes that, and on a
VM it varies from run to run). Every run's frames are checked equal to the first decoder's, byte for byte.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from packimport import load_pack  # noqa: E402

load_pack()

from gmi_video_pack.gmi.errors import MediaError  # noqa: E402
from gmi_video_pack.gmi.media import (DecodeOptions, decode_audio, decode_frames, decoder, plan_frames,  # noqa: E402
                                      probe)


def available() -> dict[str, str]:
    """GMI_DECODER value -> what it picks here, for each decoder that works."""
    found = {}
    for choice in ("ffmpeg", "pyav"):
        os.environ["GMI_DECODER"] = choice
        try:
            found[choice] = str(decoder())
        except MediaError as exc:
            print(f"{choice}: not measured ({exc})")
    return found


def run_once(clip: Path, out: np.ndarray, options: DecodeOptions) -> tuple[float, float, int]:
    """Seconds for probe + frames, seconds for the audio, frames written."""
    start = time.perf_counter()
    info = probe(clip)
    count = decode_frames(clip, info, out, options=options)
    frames_done = time.perf_counter()
    decode_audio(clip, info)
    return frames_done - start, time.perf_counter() - frames_done, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-frames", type=int, default=0)
    parser.add_argument("--every-nth", type=int, default=1)
    parser.add_argument("--max-side", type=int, default=0)
    args = parser.parse_args()
    options = DecodeOptions(max_frames=args.max_frames, every_nth=args.every_nth, max_side=args.max_side)
    decoders = available()
    if not decoders:
        sys.exit("no decoder to measure")
    os.environ["GMI_DECODER"] = next(iter(decoders))
    info = probe(args.clip)
    plan = plan_frames(info, options)
    out = np.ones(plan.shape, np.float32)  # pages present from here on
    first = None
    times: dict[str, list[tuple[float, float]]] = {choice: [] for choice in decoders}
    for _ in range(args.repeat):
        for choice in decoders:
            os.environ["GMI_DECODER"] = choice
            out.fill(2.0)
            frames_s, audio_s, count = run_once(args.clip, out, options)
            assert count == plan.count and float(out.max()) <= 1.0, choice
            if first is None:
                first = out.copy()
            assert np.array_equal(out, first), f"{choice} decoded different frames"
            times[choice].append((frames_s, audio_s))
    print(f"clip {args.clip.name}: {plan.count} frames {plan.width}x{plan.height} "
          f"({plan.nbytes / 2**20:.0f} MiB float32), {options}, median of {args.repeat}; frames equal on all")
    for choice, runs in times.items():
        frames = [f for f, _ in runs]
        median = statistics.median(frames)
        print(f"GMI_DECODER={choice:6s} {decoders[choice]:28s} frames {median:.2f}s = {plan.count / median:.0f} "
              f"frames/s (min {min(frames):.2f}, max {max(frames):.2f}) | audio "
              f"{statistics.median(a for _, a in runs):.3f}s")


if __name__ == "__main__":
    main()
