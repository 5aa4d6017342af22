"""What a user sees while a job runs: progress events, the whole run's share per stage, the wait's text and ETA,
and how often GMI is asked."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from .journal import Journal
from .models import ModelSpec


@dataclass(frozen=True)
class Progress:
    """A lifecycle event for a progress bar: ``fraction`` of the current stage, 0..1, or None when unknown."""

    stage: str  # submitting | queued | processing | downloading | saved | reused
    text: str
    fraction: float | None = None
    request_id: str | None = None


# Share of a whole run (0..100) that each stage covers, for progress bars; decoding is the nodes' last step.
STAGE_SPANS = {"submitting": (0, 5), "queued": (5, 10), "processing": (10, 80), "downloading": (80, 90),
               "saved": (90, 90), "reused": (90, 90), "decoding": (90, 100)}


def percent_done(event: Progress, decoding_follows: bool = True) -> float:
    """How far the whole run is, 0..100, for a bar; without a decode to follow, a saved video is 100."""
    if not decoding_follows and event.stage in ("saved", "reused"):
        return 100.0
    low, high = STAGE_SPANS.get(event.stage, (0, 100))
    return low + (high - low) * (event.fraction if event.fraction is not None else 0.0)


@dataclass(frozen=True)
class PollPolicy:
    """Polling grows with the job's age: ``first`` seconds early on, up to ``cap``."""

    first: float = 3.0
    cap: float = 15.0
    growth: float = 0.1  # seconds of interval per second of age

    def interval(self, age: float) -> float:
        return min(self.cap, max(self.first, age * self.growth))


def expected_seconds(journal: Journal, spec: ModelSpec, payload: dict) -> tuple[float, bool]:
    """How long a job like this usually takes at GMI: the median of this machine's finished jobs of the same model,
    duration and sound; the catalogue's default before there are any. Returns (seconds, learned)."""
    group = spec.timing_group(payload)
    seen = [seconds for past, seconds in journal.run_seconds(spec.model_id) if spec.timing_group(past) == group]
    if not seen:
        return spec.default_eta(payload), False
    return statistics.median(seen[:50]), True  # the newest 50: GMI's speed changes over time


def describe_wait(stage: str, elapsed: float, eta: float | None) -> tuple[str, float | None]:
    """The text under the node while GMI works, and the bar's fraction of the wait."""
    def clock(seconds: float) -> str:
        seconds = int(seconds)
        return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"

    if stage == "queued" or eta is None:
        return f"{stage} at GMI, {clock(elapsed)}", None
    if elapsed <= eta:
        return f"processing at GMI, {clock(elapsed)} of about {clock(eta)}", min(0.95, elapsed / eta)
    return f"processing at GMI, {clock(elapsed)}: taking longer than usual (usually about {clock(eta)})", None


def interrupted_text(request_id: str | None, rehearsal: bool = False) -> str:
    """What a stopped run says under the node: where the job is, and that queueing again costs nothing."""
    if rehearsal:
        return "interrupted: a rehearsal costs nothing; queue again to run it again."
    if request_id is None:
        return "interrupted before anything was submitted: nothing was paid."
    return (f"interrupted: the job is kept at GMI as request {request_id}. Queue the same inputs again to collect "
            "it; nothing new is paid (if it has finished, it is just downloaded).")
