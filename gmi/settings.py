"""The pack's environment variables, read in one place, each bad value refused in one line saying how to fix it."""
from __future__ import annotations

import os

from .errors import InputError

DEFAULT_BASE_URL = "https://console.gmicloud.ai"


def base_url(environ: dict | None = None) -> str:
    """GMI_BASE_URL: where GMI's API is (the key goes only there)."""
    env = os.environ if environ is None else environ
    return (env.get("GMI_BASE_URL") or "").strip() or DEFAULT_BASE_URL


def spend_cap(environ: dict | None = None) -> float | None:
    """GMI_SPEND_CAP_USD: dollars new submits of one session may cost in all; unset = no cap."""
    env = os.environ if environ is None else environ
    raw = (env.get("GMI_SPEND_CAP_USD") or "").strip()
    if not raw:
        return None
    try:
        value = float(raw.lstrip("$"))
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise InputError(f"GMI_SPEND_CAP_USD: {raw!r} is not an amount of dollars; set it to e.g. 20, or unset it.")
    return value


def max_jobs(environ: dict | None = None, default: int = 4) -> int:
    """GMI_MAX_JOBS: GMI jobs this process runs at once (more wait their turn before submitting)."""
    env = os.environ if environ is None else environ
    raw = (env.get("GMI_MAX_JOBS") or "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 64:
        raise InputError(f"GMI_MAX_JOBS: {raw!r} is not allowed; set a whole number 1-64 (default {default}).")
    return int(raw)
