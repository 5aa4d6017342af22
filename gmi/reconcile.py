"""A submit whose answer was lost: find the job it made in GMI's listing, or prove it made none.

Absence is proof only when the listing provably covers the whole window in which the lost POST could have created a
job: every record in it readable and dated, and the listing complete (its ``total`` is what it holds) or reaching back
past the window's start. Anything less keeps the take unknown: a second POST would be a second payment.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from .client import Listing, RemoteJob
from .images import payload_matches

SKEW = 120.0  # seconds of clock difference allowed between this machine and GMI
MS_THRESHOLD = 1e11  # a unix time above this is in milliseconds (1e11 s is the year 5138)


@dataclass(frozen=True)
class Verdict:
    found: RemoteJob | None = None                         # the job the lost POST made
    candidates: list[str] = field(default_factory=list)    # ids that may be it, when none is certain
    covered: bool = False                                  # the listing holds every job of the window


def created_at(value: object) -> float | None:
    """Unix seconds from GMI's ``created_at``: seconds, milliseconds or ISO-8601 (a string of digits too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                when = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return None
            return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(value, (int, float)) and value > 0:
        return value / 1000.0 if value > MS_THRESHOLD else float(value)
    return None


def judge(listing: Listing, *, model_id: str, payload: dict, started: float, lasted: float,
          others: set[str], collected: set[str], images: dict | None = None) -> Verdict:
    """What ``listing`` says of a POST begun at ``started`` (unix s) that could have lasted ``lasted`` seconds.
    ``others``: ids other takes of the journal made (not ours); ``collected``: ids the user collected by hand."""
    first, last = started - SKEW, started + lasted + SKEW
    candidates, undated, reaches_back = [], False, False
    for job in listing.jobs:
        model = job.raw.get("model")
        if (isinstance(model, str) and model != model_id) or job.request_id in others:
            continue
        when = created_at(job.raw.get("created_at"))
        if when is None:
            undated = True
            candidates.append(job)
        elif when < first:
            reaches_back = True
        elif when <= last:
            candidates.append(job)
    complete = listing.total is not None and listing.total == len(listing.jobs)
    covered = not undated and listing.unreadable == 0 and (complete or reaches_back)
    exact = [job for job in candidates if payload_matches(job.raw.get("payload"), payload, images or {})]
    if len(exact) == 1:
        return Verdict(found=exact[0], candidates=[exact[0].request_id], covered=covered)
    if len(candidates) == 1 and candidates[0].request_id in collected:
        # The user collected it by hand, as our message asked: that is the job this take made.
        return Verdict(found=candidates[0], candidates=[candidates[0].request_id], covered=covered)
    return Verdict(candidates=[job.request_id for job in candidates], covered=covered)
