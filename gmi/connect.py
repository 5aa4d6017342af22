"""How a JobRunner is wired: to GMI (the key, this session's spend cap, the process's governor), or to the free
local rehearsal stand-in (no key, no cap, no governor). The nodes and the command line both open runners here."""
from __future__ import annotations

import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Callable

from . import settings
from .client import GMIClient
from .budget import SpendCap
from .governor import shared_governor
from .jobs import Journal, JobRunner
from .keys import resolve_api_key
from .progress import Progress
from .rehearsal import REHEARSAL_KEY, RehearsalQueue

_budget: SpendCap | None = None
_budget_lock = threading.Lock()


def session_budget() -> SpendCap:
    """One spend cap for the whole process (a ComfyUI session, or one command), from GMI_SPEND_CAP_USD."""
    global _budget
    with _budget_lock:
        if _budget is None:
            _budget = SpendCap(settings.spend_cap())
        return _budget


@asynccontextmanager
async def open_runner(journal_path: Path, output_dir: Path, key_file: Path, *,
                      on_progress: Callable[[Progress], None],
                      rehearsal_label: str | None = None) -> AsyncIterator[JobRunner]:
    """A runner for one job; with ``rehearsal_label``, against a stand-in that lives as long as the context."""
    journal = Journal(journal_path)
    if rehearsal_label is not None:
        def known(request_id: str) -> tuple[str, dict] | None:
            job = journal.find_request(request_id)
            return (job.model_id, job.payload) if job is not None and job.rehearsal else None

        async with RehearsalQueue(rehearsal_label, known) as queue:
            yield JobRunner(journal, lambda: GMIClient(queue.base_url, REHEARSAL_KEY), output_dir,
                            on_progress=on_progress)
        return

    def connect() -> GMIClient:
        return GMIClient(settings.base_url(), resolve_api_key(key_file))

    yield JobRunner(journal, connect, output_dir, on_progress=on_progress, budget=session_budget(),
                    governor=shared_governor(settings.max_jobs()))
