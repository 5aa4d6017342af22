"""What a burst of 429s costs a batch: 50 takes, 8 at once, through the whole engine (governor, client, runner,
journal, download) against the fake GMI on loopback, in virtual time (bench/vclock.py), before and after issue 13.

    python bench/ratelimit.py [--jobs 50] [--max-jobs 8] [--burst 18] [--retry-after 1] [--burst-at 5]
                              [--job-seconds 3] [--before df1675d]

Each fake job takes --job-seconds at "GMI". In the burst run, the first --burst API requests (submits and status reads
alike) from --burst-at seconds on are answered 429 with Retry-After: --retry-after. "before" is the engine at commit
--before; "after" is the working tree with the proposed jobs.py/client.py wiring applied to a copy (bench/variants.py).
Figures are virtual seconds: what a user would wait.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from aiohttp import web  # noqa: E402

from conftest import make_clip  # noqa: E402
from fakegmi import FakeGMI  # noqa: E402
from variants import BEFORE_REV, engines  # noqa: E402
from vclock import VirtualTime  # noqa: E402


class BurstyGMI(FakeGMI):
    """The fake GMI, answering a burst of API requests with 429 + Retry-After, and timing every request."""

    def __init__(self, *args, burst: int = 0, burst_at: float = 0.0, retry_after: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.burst_left, self.burst_at, self.retry_after = burst, burst_at, retry_after
        self.start_wall = 0.0
        self.limited_at: list[float] = []   # seconds since start of each 429
        self.asked_at: list[float] = []     # seconds since start of each submit / status read

    def elapsed(self) -> float:
        return self.wall() - self.start_wall

    async def _fault(self, route, request, job=None):
        if route in ("post", "status"):
            self.asked_at.append(self.elapsed())
            if self.burst_left and self.elapsed() >= self.burst_at:
                self.burst_left -= 1
                self.limited_at.append(self.elapsed())
                return web.json_response({"error": "Rate limit exceeded for your organization"}, status=429,
                                         headers={"Retry-After": f"{self.retry_after:g}"})
        return await super()._fault(route, request, job)


async def batch(engine, clip: Path, folder: Path, args, burst: int) -> dict:
    vt = VirtualTime()
    server = BurstyGMI({(a, s): clip for a in ("16:9", "9:16", "1:1") for s in (True, False)}, wall=vt.wall,
                       burst=burst, burst_at=args.burst_at, retry_after=args.retry_after)
    server.job_seconds = args.job_seconds
    await server.start()
    server.start_wall = vt.wall()
    governor = engine.governor.Governor(max_jobs=args.max_jobs, clock=vt.clock)
    vt.park_governor(governor)
    journal = engine.journal.Journal(folder / "journal.sqlite3")
    texts: list[str] = []
    spec = engine.models.KLING_V3_T2V

    def connect(take: int):
        return lambda: engine.client.GMIClient(server.base_url, server.key, sleep=vt.sleep, clock=vt.clock,
                                               rng=random.Random(take))

    async def one(take: int):
        runner = engine.jobs.JobRunner(journal, connect(take), folder / "out", clock=vt.clock, sleep=vt.sleep,
                                       wall_clock=vt.wall, poll=engine.progress.PollPolicy(), governor=governor,
                                       on_progress=lambda event: texts.append(event.text))
        payload = spec.build_payload({"prompt": "bench rate limit", "duration": 3, "aspect_ratio": "16:9",
                                      "sound": True})
        return await runner.run(spec, payload, take, timeout_s=3600)

    try:
        results = await vt.run(one(take) for take in range(args.jobs))
    finally:
        await server.stop()
    failed = [r for r in results if isinstance(r, BaseException)]
    last_429 = max(server.limited_at, default=None)
    after = [t for t in server.asked_at if last_429 is not None and t > last_429]
    return {"seconds": server.elapsed(), "failed": len(failed), "first_failure": failed[0] if failed else None,
            "429s": len(server.limited_at), "last_429": last_429, "requests": len(server.asked_at),
            "gaps_after": [b - a for a, b in zip(after, after[1:9])],
            "said": sum("rate-limited by GMI, waiting" in text for text in texts)}


def show(tag: str, clean: dict, burst: dict, args) -> None:
    added = burst["seconds"] - clean["seconds"]
    asked = burst["429s"] * args.retry_after
    if len(tag) > 6:
        print(f"{tag}:")
        tag = ""
    print(f"{tag:6}  no burst {clean['seconds']:6.1f} s | with the burst {burst['seconds']:6.1f} s | added "
          f"{added:6.1f} s (GMI asked for {burst['429s']} x {args.retry_after:g} s = {asked:g} s) | last 429 at "
          f"{burst['last_429'] or 0:.1f} s | requests {clean['requests']} -> {burst['requests']} | failed "
          f"{clean['failed']} / {burst['failed']}")
    gaps = " ".join(f"{gap:.2f}" for gap in burst["gaps_after"])
    print(f"        seconds between the first requests after the last 429: {gaps} | node/CLI lines "
          f"'rate-limited by GMI, waiting N s': {burst['said']}")
    if burst["first_failure"] is not None:
        print(f"        first failure: {burst['first_failure']}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--max-jobs", type=int, default=8)
    parser.add_argument("--burst", type=int, default=18)
    parser.add_argument("--retry-after", type=float, default=1.0)
    parser.add_argument("--burst-at", type=float, default=5.0)
    parser.add_argument("--job-seconds", type=float, default=3.0)
    parser.add_argument("--before", default=BEFORE_REV)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="gmi-bench-ratelimit-"))
    clip = make_clip(folder / "clip.mp4", 320, 180)
    before, after, unwired = engines(args.before, unwired=True)
    print(f"{args.jobs} takes, {args.max_jobs} at once, fake jobs of {args.job_seconds:g} s; burst: {args.burst} x 429 "
          f"Retry-After: {args.retry_after:g} from {args.burst_at:g} s. Virtual seconds.")
    print(f"wiring applied to the 'after' copy: {len(after.wiring_applied)} edit(s)")
    started = time.perf_counter()
    for tag, engine in (("before", before), ("after", after), ("after, governor only (jobs/client unwired)", unwired)):
        clean = await batch(engine, clip, folder / f"{tag}-clean", args, 0)
        burst = await batch(engine, clip, folder / f"{tag}-burst", args, args.burst)
        show(tag, clean, burst, args)
    print(f"(bench ran {time.perf_counter() - started:.0f} s of real time)")


if __name__ == "__main__":
    asyncio.run(main())
