"""Wall time of 1 vs N concurrent jobs through the engine (governor included) against the fake GMI on loopback.

    python bench/concurrency.py [--jobs 4] [--seconds 3] [--max-jobs 4]

Each fake job takes --seconds at "GMI" (real time); the pack polls as it does for real (every 3 s early on) and the
governor spaces all requests 0.25 s apart. With enough governor places, N jobs take about as long as one.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from packimport import load_pack  # noqa: E402

load_pack()

from conftest import make_clip  # noqa: E402
from fakegmi import FakeGMI  # noqa: E402
from gmi_video_pack.gmi.client import GMIClient  # noqa: E402
from gmi_video_pack.gmi.governor import Governor  # noqa: E402
from gmi_video_pack.gmi.jobs import Journal, JobRunner, PollPolicy  # noqa: E402
from gmi_video_pack.gmi.models import KLING_V3_T2V  # noqa: E402


async def batch(server: FakeGMI, folder: Path, jobs: int, governor: Governor, tag: str) -> float:
    journal = Journal(folder / f"{tag}.sqlite3")

    async def one(take: int):
        runner = JobRunner(journal, lambda: GMIClient(server.base_url, server.key), folder / tag,
                           poll=PollPolicy(), governor=governor)
        payload = KLING_V3_T2V.build_payload({"prompt": f"bench {tag}", "duration": 3, "aspect_ratio": "16:9",
                                              "sound": True})
        return await runner.run(KLING_V3_T2V, payload, take, timeout_s=600)

    start = time.perf_counter()
    await asyncio.gather(*(one(t) for t in range(jobs)))
    return time.perf_counter() - start


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--max-jobs", type=int, default=4)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="gmi-bench-"))
    clip = make_clip(folder / "clip.mp4", 320, 180)
    server = FakeGMI({(a, s): clip for a in ("16:9", "9:16", "1:1") for s in (True, False)})
    server.job_seconds = args.seconds
    await server.start()
    try:
        governor = Governor(max_jobs=args.max_jobs)
        one = await batch(server, folder, 1, governor, "one")
        many = await batch(server, folder, args.jobs, governor, "many")
    finally:
        await server.stop()
    print(f"fake job length {args.seconds:.1f}s, governor places {args.max_jobs}")
    print(f"1 job: {one:.2f}s wall | {args.jobs} concurrent jobs: {many:.2f}s wall "
          f"({many / one:.2f}x one job; serial would be {args.jobs:.0f}x) | peak in flight {governor.peak_in_flight}")


if __name__ == "__main__":
    asyncio.run(main())
