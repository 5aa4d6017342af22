"""Run the fake GMI by hand, for checking the pack in a real ComfyUI and browser (loopback only).

    python tests/serve_fake_gmi.py [--port 8765] [--polls 5] [--size 640x360] [--seconds 3]

Prints the GMI_BASE_URL and GMI_API_KEY to start ComfyUI with. Jobs answer queued, then processing, and succeed
after --polls status reads with a real MP4 of the asked aspect ratio."""
from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from conftest import make_clip
from fakegmi import FakeGMI


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--polls", type=int, default=5)
    parser.add_argument("--size", default="640x360", help="frame size of the 16:9 clip (the others follow)")
    parser.add_argument("--seconds", type=float, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    folder = Path(tempfile.mkdtemp(prefix="fakegmi-"))
    clips = {}
    for aspect, (w, h) in {"16:9": (width, height), "9:16": (height, width), "1:1": (height, height)}.items():
        for sound in (True, False):
            clips[(aspect, sound)] = make_clip(folder / f"{aspect.replace(':', 'x')}_{sound}.mp4", w, h,
                                               seconds=args.seconds, audio="aac" if sound else None)
    server = FakeGMI(clips)
    server.polls_until_done = args.polls
    await server.start(args.port, args.port + 1)
    print(f"GMI_BASE_URL={server.base_url}\nGMI_API_KEY={server.key}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
