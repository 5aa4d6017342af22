"""How soon a finished job is seen, and how many status reads it costs: jobs of varied lengths through the whole engine
(governor, client, runner, journal, download) against the fake GMI on loopback, in virtual time (bench/vclock.py),
before and after issue 13.

    python bench/polling.py [--jobs 160] [--max-jobs 4] [--spread 0.05] [--seed 13] [--before df1675d]

Four kinds of job (3 s silent, 5 s, 10 s and 15 s with sound) take about 60, 120, 210 and 330 s at "GMI". Each job's
length: 80 % of jobs within the usual spread (median x lognormal, sigma --spread), 10 % early (0.6-0.9 x), 10 % overrun
(1.1-2 x). The journal starts with 20 finished jobs of each kind drawn the same way, so the estimate is learned, as on a
machine in use. Latency is measured at the fake: the first read that answers success, minus the moment the job ended.
"near" jobs end within 5 % of the learned estimate the runner had when it submitted the job.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from conftest import make_clip  # noqa: E402
from fakegmi import FakeGMI  # noqa: E402
from variants import BEFORE_REV, engines  # noqa: E402
from vclock import VirtualTime  # noqa: E402

KINDS = [  # (duration, sound, usual seconds at GMI)
    (3, False, 60.0), (5, True, 120.0), (10, True, 210.0), (15, True, 330.0)]


def job_length(rng: random.Random, usual: float, spread: float) -> float:
    draw = rng.random()
    if draw < 0.8:
        return usual * math.exp(rng.gauss(0.0, spread))
    if draw < 0.9:
        return usual * rng.uniform(0.6, 0.9)
    return usual * rng.uniform(1.1, 2.0)


class TimedGMI(FakeGMI):
    """The fake GMI with a length per job (by the index in its prompt), noting when each end is first reported."""

    def __init__(self, *args, lengths: list[float], on_submit, **kwargs):
        super().__init__(*args, **kwargs)
        self.lengths = lengths
        self.on_submit = on_submit
        self.job_seconds = 1.0  # not None: GMI's clock then times the jobs
        self.latency: dict[int, float] = {}

    async def _submit(self, request):
        self.on_submit(int((await request.json())["payload"]["prompt"].rsplit(" ", 1)[1]))
        return await super()._submit(request)

    async def _status(self, request):
        job = self.jobs.get(request.match_info["rid"])
        index = int(job["payload"]["prompt"].rsplit(" ", 1)[1]) if job is not None else None
        if index is not None:
            self.job_seconds = self.lengths[index]  # read by the handler below before it awaits anything
        response = await super()._status(request)
        if index is not None and job["status"] == "success" and index not in self.latency:
            self.latency[index] = self.wall() - job["created_at"] - self.lengths[index]
        return response


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def session(engine, clip: Path, folder: Path, args) -> dict:
    rng = random.Random(args.seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(args.jobs)]
    lengths = [job_length(rng, usual, args.spread) for _, _, usual in kinds]
    vt = VirtualTime()
    spec = engine.models.KLING_V3_T2V
    journal = engine.journal.Journal(folder / "journal.sqlite3")
    estimates: dict[int, float] = {}

    def payload(duration: int, sound: bool, prompt: str) -> dict:
        return spec.build_payload({"prompt": prompt, "duration": duration, "aspect_ratio": "16:9", "sound": sound})

    def submitted(index: int) -> None:
        # The estimate as the runner sees it when it starts waiting: the journal as it is at the submit.
        duration, sound, _ = kinds[index]
        estimates[index] = engine.progress.expected_seconds(journal, spec, payload(duration, sound, "any"))[0]

    server = TimedGMI({(a, s): clip for a in ("16:9", "9:16", "1:1") for s in (True, False)}, wall=vt.wall,
                      lengths=lengths, on_submit=submitted)
    await server.start()

    history = random.Random(args.seed + 1)
    for k, (duration, sound, usual) in enumerate(KINDS):
        for n in range(20):  # finished before this session: what makes the estimate "learned"
            ended = vt.wall() - 86_400 + 3_600 * n
            journal.record(engine.journal.Job(
                key=f"history-{k}-{n}", model_id=spec.model_id, payload=payload(duration, sound, f"history {n}"),
                take=n, state=engine.journal.JobState.SAVED, request_id=f"old-{k}-{n}",
                submit_started_at=ended - job_length(history, usual, args.spread), finished_at=ended))
    governor = engine.governor.Governor(max_jobs=args.max_jobs, clock=vt.clock)
    vt.park_governor(governor)
    started = vt.wall()

    async def one(index: int):
        duration, sound, _ = kinds[index]
        job_payload = payload(duration, sound, f"bench poll {index}")
        runner = engine.jobs.JobRunner(
            journal, lambda: engine.client.GMIClient(server.base_url, server.key, sleep=vt.sleep, clock=vt.clock,
                                                     rng=random.Random(index)),
            folder / "out", clock=vt.clock, sleep=vt.sleep, wall_clock=vt.wall, poll=engine.progress.PollPolicy(),
            governor=governor)
        return await runner.run(spec, job_payload, 0, timeout_s=86_400)  # the deadline counts the wait for a place

    try:
        results = await vt.run(one(i) for i in range(args.jobs))
    finally:
        await server.stop()
    hours = (vt.wall() - started) / 3600
    reads = {int(job["payload"]["prompt"].rsplit(" ", 1)[1]): job["reads"] for job in server.jobs.values()}

    def where(index: int) -> str:
        off = lengths[index] / estimates[index] - 1
        return "near" if abs(off) <= 0.05 else ("early" if off < 0 else "over")

    failed = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
    for index, error in failed[:3]:
        print(f"  job {index} failed: {type(error).__name__}: {error}")
    done = [i for i in range(args.jobs) if i in server.latency]
    groups: dict[str, list[int]] = {"all": done, "near": [], "early": [], "over": []}
    for index in done:
        groups[where(index)].append(index)
    return {"groups": {name: ([server.latency[i] for i in members], [reads[i] for i in members])
                       for name, members in groups.items()},
            "failed": len(failed),
            "per_hour": len(server.api_requests) / hours if hours else float("nan"), "hours": hours,
            "ceiling": 3600 / governor.gap if governor.gap else float("inf")}


def show(tag: str, figures: dict) -> None:
    print(f"{tag}: {figures['failed']} failed | {figures['per_hour']:.0f} API requests per hour over "
          f"{figures['hours'] * 60:.0f} virtual minutes (the governor's spacing allows {figures['ceiling']:.0f})")
    for name, (latency, reads) in figures["groups"].items():
        if not latency:
            continue
        print(f"  {name:5} {len(latency):4} jobs | seen after the end: p50 {pct(latency, 0.5):5.2f} s, "
              f"p95 {pct(latency, 0.95):5.2f} s, max {max(latency):5.2f} s | status reads per job "
              f"{statistics.mean(reads):5.1f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=160)
    parser.add_argument("--max-jobs", type=int, default=4)
    parser.add_argument("--spread", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--before", default=BEFORE_REV)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="gmi-bench-polling-"))
    clip = make_clip(folder / "clip.mp4", 320, 180)
    before, after = engines(args.before)
    print(f"{args.jobs} jobs ({', '.join(f'{d} s: ~{u:.0f} s' for d, _, u in KINDS)} at GMI), {args.max_jobs} at once, "
          f"usual spread {args.spread:.0%}; wiring applied to the 'after' copy: {len(after.wiring_applied)} edit(s)")
    real = time.perf_counter()
    for tag, engine in (("before", before), ("after", after)):
        (folder / tag).mkdir()
        show(tag, await session(engine, clip, folder / tag, args))
    print(f"(bench ran {time.perf_counter() - real:.0f} s of real time)")


if __name__ == "__main__":
    asyncio.run(main())
