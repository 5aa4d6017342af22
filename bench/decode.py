"""Decode a clip exactly as the nodes do and print wall time, peak memory and the ratio to ffmpeg's own decode.

    python bench/decode.py CLIP [--max-frames N] [--every-nth K] [--max-side S] [--repeat R] [--compare] [--floor]
    python bench/decode.py --make DIR     # writes the reference clips (720p 5 s and 15 s, 1080x1920 10 s)

Each measurement runs in a fresh process (memory reused inside one process would flatter the figures), interleaved
with ffmpeg's `-f rawvideo -pix_fmt rgb24 - >/dev/null` on the same clip. Wall time counts from opening the file to
IMAGE and AUDIO ready (imports excluded). Peak RSS is the process's high-water mark less what it held after imports.
--floor also times making a fresh tensor of the same size present and nothing else: no decode can beat that.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from packimport import load_pack  # noqa: E402

load_pack()

from gmi_video_pack.gmi.media import DecodeOptions, _prefault, decode_clip, ffmpeg_exe, plan_frames, probe  # noqa: E402

REFERENCE_CLIPS = {"720p_5s.mp4": ("1280x720", 5), "720p_15s.mp4": ("1280x720", 15),
                   "1080x1920_10s.mp4": ("1080x1920", 10)}


def rss_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS


def decode_like_the_node(path: Path, options: DecodeOptions):
    import torch

    clip = decode_clip(path, options=options, alloc=lambda shape: torch.empty(shape, dtype=torch.float32))
    wave, rate = clip.audio
    return clip.frames, {"waveform": torch.from_numpy(wave).unsqueeze(0), "sample_rate": rate}


def decode_naive(path: Path, options: DecodeOptions):
    """The common approach: one float tensor per frame in a list, stacked at the end (as ComfyUI core does)."""
    import numpy as np
    import torch

    info = probe(path)
    proc = subprocess.Popen([ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                            stdout=subprocess.PIPE)
    size = info.width * info.height * 3
    frames = []
    while True:
        raw = proc.stdout.read(size)
        if len(raw) < size:
            break
        frames.append(torch.from_numpy(np.frombuffer(raw, np.uint8).reshape(info.height, info.width, 3)).float() / 255)
    proc.wait()
    images = torch.stack(frames)
    frames.clear()
    wave, rate = decode_clip(path, frames=False).audio
    return images, {"waveform": torch.from_numpy(wave).unsqueeze(0), "sample_rate": rate}


def touch_only(path: Path, options: DecodeOptions):
    """Only the fresh memory: a tensor of the decode's shape made present the way the decoder does it."""
    import threading

    import torch

    images = torch.empty(plan_frames(probe(path), options).shape, dtype=torch.float32)
    _prefault(images.numpy(), threading.Event())
    return images, {"waveform": torch.zeros(1, 1, 0), "sample_rate": 0}


KINDS = {"node": decode_like_the_node, "naive": decode_naive, "floor": touch_only}


def measure_once(path: Path, options: DecodeOptions, kind: str) -> dict:
    import torch  # noqa: F401 - imports are part of the baseline, not of the decode

    reset_peak()
    base = rss_bytes("VmRSS")
    start = time.perf_counter()
    images, audio = KINDS[kind](path, options)
    wall = time.perf_counter() - start
    peak = rss_bytes("VmHWM") - base
    tensor = images.numel() * images.element_size()
    return {"frames": int(images.shape[0]), "size": f"{images.shape[2]}x{images.shape[1]}", "wall": wall,
            "peak_extra": peak, "tensor": tensor, "audio_samples": int(audio["waveform"].shape[-1])}


def ffmpeg_seconds(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                   stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def make_clips(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (size, seconds) in REFERENCE_CLIPS.items():
        # A noisy test pattern at ~8 Mb/s decodes about as hard as a real Kling 720p clip; AAC stereo 48 kHz.
        subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc2=size={size}:rate=24,noise=alls=12:allf=t", "-f", "lavfi", "-i",
                        "sine=frequency=440:sample_rate=48000", "-t", str(seconds), "-c:v", "libx264", "-preset",
                        "veryfast", "-b:v", "8M", "-maxrate", "10M", "-bufsize", "16M", "-pix_fmt", "yuv420p",
                        "-c:a", "aac", "-ac", "2", "-b:a", "128k", "-movflags", "+faststart", str(folder / name)],
                       check=True)
        print(folder / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip", nargs="?", type=Path)
    parser.add_argument("--max-frames", type=int, default=0)
    parser.add_argument("--every-nth", type=int, default=1)
    parser.add_argument("--max-side", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="fresh-process runs of each (default 3)")
    parser.add_argument("--compare", action="store_true", help="also run the naive list-and-stack decode")
    parser.add_argument("--make", type=Path, metavar="DIR", help="write the reference clips into DIR and stop")
    parser.add_argument("--floor", action="store_true",
                        help="also time making a fresh tensor of the same size present, and nothing else")
    parser.add_argument("--one", choices=list(KINDS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        make_clips(args.make)
        return
    if args.clip is None:
        parser.error("give a CLIP (or --make DIR)")
    options = DecodeOptions(max_frames=args.max_frames, every_nth=args.every_nth, max_side=args.max_side)
    if args.one:
        print(json.dumps(measure_once(args.clip, options, args.one)))
        return
    kinds = ["node"] + (["naive"] if args.compare else []) + (["floor"] if args.floor else [])
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    baseline = []
    child = [sys.executable, __file__, str(args.clip), "--max-frames", str(args.max_frames), "--every-nth",
             str(args.every_nth), "--max-side", str(args.max_side), "--one"]
    for _ in range(args.repeat):
        baseline.append(ffmpeg_seconds(args.clip))
        for kind in kinds:
            out = subprocess.run(child + [kind], capture_output=True, text=True, check=True).stdout
            runs[kind].append(json.loads(out.strip().splitlines()[-1]))
    ff = statistics.median(baseline)
    print(f"clip {args.clip.name}: ffmpeg rgb24 decode {ff:.2f}s median of {args.repeat} "
          f"({', '.join(f'{b:.2f}' for b in baseline)})")
    for kind, results in runs.items():
        first = results[0]
        walls = [r["wall"] for r in results]
        peaks = [r["peak_extra"] / r["tensor"] for r in results]
        print(f"{kind:5s}: {first['frames']} frames {first['size']}, tensor {first['tensor'] / 2**20:.0f} MiB, "
              f"audio {first['audio_samples']} samples | wall {statistics.median(walls):.2f}s median "
              f"(min {min(walls):.2f}, max {max(walls):.2f}) = {statistics.median(walls) / ff:.2f}x ffmpeg "
              f"(best {min(walls) / ff:.2f}x) | peak RSS beyond imports "
              f"{statistics.median([r['peak_extra'] for r in results]) / 2**20:.0f} MiB = "
              f"{statistics.median(peaks):.3f}x the tensor (max {max(peaks):.3f}x)")


if __name__ == "__main__":
    main()
