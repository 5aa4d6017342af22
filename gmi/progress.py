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
    """How long to wait before the next status read, from the job's age (seconds since its submit).

    Without an estimate, reads grow with age: every ``first`` seconds early on, up to every ``cap``. With ``eta``, the
    time such jobs have taken here, reads come every ``near`` seconds within ``window`` x eta of it, so a job that ends
    as usual is seen done within ``near`` seconds; farther away they thin out by ``slope`` seconds per second, up to
    ``early_caps`` x ``cap`` long before it and ``cap`` after it (a job that overruns is seen within one ``cap``).
    For jobs of a minute or more that costs fewer reads than the age-only schedule (bench/polling.py).
    """

    first: float = 3.0
    cap: float = 15.0
    growth: float = 0.1        # seconds of interval per second of age (no estimate)
    near: float = 1.5
    window: float = 0.05       # share of eta either side of it
    slope: float = 0.5
    early_growth: float = 0.25  # seconds of interval per second of age, long before the estimate
    early_caps: float = 2.0

    def interval(self, age: float, eta: float | None = None) -> float:
        if eta is None or eta <= 0:
            return min(self.cap, max(self.first, age * self.growth))
        near = min(self.near, self.cap)
        half = self.window * eta
        if age < eta - half:  # before the window: sparse, closing in on it
            sparse = min(self.early_caps * self.cap, max(self.first, age * self.early_growth))
            return max(near, min(sparse, near + self.slope * (eta - half - age)))
        if age <= eta + half:
            return near
        return min(self.cap, near + self.slope * (age - eta - half))


def expected_seconds(journal: Journal, spec: ModelSpec, payload: dict) -> tuple[float, bool]:
    """How long a job like this usually takes at GMI: the median of this machine's finished jobs of the same model,
    duration and sound; the catalogue's default before there are any. Returns (seconds, learned)."""
    group = spec.timing_group(payload)
    seen = [seconds for past, seconds in journal.run_seconds(spec.model_id) if spec.timing_group(past) == group]
    if not seen:
        return spec.default_eta(payload), False
    return statistics.median(seen[:50]), True  # the newest 50: GMI's speed changes over time


def describe_wait(stage: str, elapsed: float, eta: float | None, where: str = "GMI") -> tuple[str, float | None]:
    """The text under the node while GMI works, and the bar's fraction of the wait."""
    def clock(seconds: float) -> str:
        seconds = int(seconds)
        return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"

    if stage == "queued" or eta is None:
        return f"{stage} at {where}, {clock(elapsed)}", None
    if elapsed <= eta:
        return f"processing at {where}, {clock(elapsed)} of about {clock(eta)}", min(0.95, elapsed / eta)
    # Past the estimate the bar keeps its place (0.95) and the text says so.
    return f"processing at {where}, {clock(elapsed)}: taking longer than usual (usually about {clock(eta)})", 0.95


def interrupted_text(request_id: str | None, rehearsal: bool = False, submitting: bool = False) -> str:
    """What a stopped run says under the node: where the job is, and that queueing again costs nothing."""
    if rehearsal:
        return "interrupted: a rehearsal costs nothing; queue again to run it again."
    if request_id is None and submitting:  # the POST may be out: its answer is recorded when it arrives
        return ("interrupted while submitting: if GMI took the job, the pack records it when GMI answers. Queue the "
                "same inputs again to collect it; it is paid for once either way.")
    if request_id is None:
        return "interrupted before anything was submitted: nothing was paid."
    return (f"interrupted: the job is kept at GMI as request {request_id}. Queue the same inputs again to collect "
            "it; nothing new is paid (if it has finished, it is just downloaded).")
