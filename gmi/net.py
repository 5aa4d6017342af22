"""Network policy shared by the API client and the media download: timings, backoff, which URLs may be fetched."""
from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from .errors import InputError

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True)
class Timing:
    """Every wait the client makes; tests shrink them to milliseconds."""

    submit_timeout: float = 180.0      # the POST can come back already finished, after tens of seconds
    status_timeout: float = 30.0
    download_read_timeout: float = 60.0
    backoff_base: float = 2.0
    backoff_cap: float = 60.0
    status_retries: int = 8             # consecutive failed status reads before giving up (deadline still applies)
    download_attempts: int = 4


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> None:
    """https only; plain http only to a loopback address (that is how tests serve)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return
    raise InputError(f"{what}: {url!r} is not an https URL; only https is accepted (http only on this machine's loopback).")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def backoff_delay(attempt: int, timing: Timing, retry_after: float | None, rng: random.Random) -> float:
    """Exponential backoff with full jitter; Retry-After, when GMI sends one, is a floor."""
    delay = rng.uniform(0.5, 1.0) * min(timing.backoff_cap, timing.backoff_base * (2 ** attempt))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
