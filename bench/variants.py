"""Two copies of the engine side by side for before/after benches: a past commit, and the working tree with the
wiring proposed for issue 13 (rate-limit text, no second wait on a 429, polling aimed at the learned estimate).

Each copy is loaded under its own package name from a temporary folder, so one process can run both against the same
fake GMI. The working tree itself is never changed. Once the wiring is in jobs.py and client.py, applying it finds
nothing to do (each edit is skipped when its new text is already there) and this module can shrink to the loader.
"""
from __future__ import annotations

import importlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE_REV = "df1675d"  # the last commit before issue 13's governor and poll schedule

# (file, old text, new text): the lines proposed for files outside this change's ownership, exactly as reported.
WIRING = [
    ("gmi/client.py",
     "            await self.governor.pace(self.sleep)\n",
     "            await self.governor.pace(self.sleep, self._held)\n"
     "\n"
     "    def _held(self, seconds: float) -> None:\n"
     "        \"\"\"The governor holds this request for GMI's rate limit (a 429 seen by any job of this process): say so.\"\"\"\n"
     "        if self.on_wait is not None:\n"
     "            self.on_wait(f\"rate-limited by GMI, waiting {seconds:.1f} s\" if seconds < 10 else\n"
     "                         f\"rate-limited by GMI, waiting {seconds:.0f} s\")\n"),
    ("gmi/client.py",
     "            delay = backoff_delay(attempt, self.timing, retry_after, self.rng)\n"
     "            attempt += 1\n",
     "            # On a 429 the governor holds every request for GMI's Retry-After: a wait here would double it, and a\n"
     "            # rate limit is no fault of this read (the deadline bounds it, not the retry count).\n"
     "            governed = self.governor is not None and isinstance(failure, RateLimitedError) and failure.status == 429\n"
     "            delay = self.governor.pause_left() if governed else backoff_delay(attempt, self.timing, retry_after,\n"
     "                                                                                self.rng)\n"
     "            attempt += 0 if governed else 1\n"),
    ("gmi/client.py",
     "            self._say_waiting(failure, delay)\n"
     "            await self.sleep(delay)\n",
     "            if not governed:  # else the governor's pause holds the next read, and _held says so\n"
     "                self._say_waiting(failure, delay)\n"
     "                await self.sleep(delay)\n"),
    ("gmi/jobs.py",
     "                delay = backoff_delay(attempt, client.timing, exc.retry_after, client.rng)\n"
     "                if self.clock() + delay > deadline:\n"
     "                    await self._fail(job, str(exc))\n"
     "                    raise\n"
     "                log.info(\"GMI submit: HTTP %s, retrying in %.1fs\", exc.status, delay)\n"
     "                busy = \"rate-limited by GMI\" if exc.status == 429 else f\"GMI is busy (HTTP {exc.status})\"\n"
     "                self.on_progress(Progress(\"submitting\", f\"{busy}, waiting {delay:.0f} s\"))\n"
     "                attempt += 1\n"
     "                await self.sleep(delay)\n"
     "                continue\n",
     "                # On a 429 the governor holds every request for GMI's Retry-After, and says so: no wait of our own.\n"
     "                governed = exc.status == 429 and client.governor is not None\n"
     "                delay = client.governor.pause_left() if governed else \\\n"
     "                    backoff_delay(attempt, client.timing, exc.retry_after, client.rng)\n"
     "                if self.clock() + delay > deadline:\n"
     "                    await self._fail(job, str(exc))\n"
     "                    raise\n"
     "                log.info(\"GMI submit: HTTP %s, retrying in %.1fs\", exc.status, delay)\n"
     "                if not governed:\n"
     "                    busy = \"rate-limited by GMI\" if exc.status == 429 else f\"GMI is busy (HTTP {exc.status})\"\n"
     "                    self.on_progress(Progress(\"submitting\", f\"{busy}, waiting {delay:.0f} s\"))\n"
     "                    attempt += 1\n"
     "                    await self.sleep(delay)\n"
     "                continue\n"),
    ("gmi/jobs.py",
     "        started = self.clock()\n"
     "        since = job.submit_started_at or self.wall_clock()  # elapsed counts from the submit, also after a re-attach\n"
     "        spec = CATALOGUE.get(job.model_id)\n"
     "        eta = (await asyncio.to_thread(expected_seconds, self.journal, spec, job.payload))[0] \\\n"
     "            if spec is not None and job.payload else None\n",
     "        since = job.submit_started_at or self.wall_clock()  # elapsed counts from the submit, also after a re-attach\n"
     "        spec = CATALOGUE.get(job.model_id)\n"
     "        eta, learned = (await asyncio.to_thread(expected_seconds, self.journal, spec, job.payload)) \\\n"
     "            if spec is not None and job.payload else (None, False)\n"
     "        aim = eta if learned and not job.rehearsal else None  # read often only around a time seen here before\n"),
    ("gmi/jobs.py",
     "            await self.sleep(min(self.poll.interval(self.clock() - started), remaining))\n",
     "            await self.sleep(min(self.poll.interval(self.wall_clock() - since, aim), remaining))\n"),
]


def apply_wiring(root: Path) -> list[str]:
    """Applies WIRING to the copy at ``root``; returns the edits that were still needed (empty once wired)."""
    applied = []
    for rel, old, new in WIRING:
        path = root / rel
        text = path.read_text(encoding="utf-8")
        if new in text:
            continue
        if text.count(old) != 1:
            raise SystemExit(f"{rel} has changed: the proposed edit no longer applies:\n{old}")
        path.write_text(text.replace(old, new), encoding="utf-8")
        applied.append(f"{rel}: {old.strip().splitlines()[0][:60]}")
    return applied


def _load(folder: Path, name: str):
    (folder / name).mkdir(exist_ok=True)
    (folder / name / "__init__.py").write_text("")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    engine = importlib.import_module(f"{name}.gmi")
    for module in ("client", "governor", "jobs", "journal", "models", "progress"):
        importlib.import_module(f"{name}.gmi.{module}")
    return engine


def engine_at(rev: str, folder: Path, name: str = "engine_before"):
    """The ``gmi`` package as it was at git revision ``rev``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "gmi"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder / name, filter="data")
    return _load(folder, name)


def engine_now(folder: Path, name: str = "engine_after", wire: bool = True):
    """The working tree's ``gmi`` package, with the proposed wiring applied to the copy unless ``wire`` is False."""
    shutil.copytree(ROOT / "gmi", folder / name / "gmi", ignore=shutil.ignore_patterns("__pycache__"))
    applied = apply_wiring(folder / name) if wire else []
    engine = _load(folder, name)
    engine.wiring_applied = applied
    return engine


def engines(rev: str = BEFORE_REV, unwired: bool = False):
    """[before, after] engine packages in a fresh temporary folder; with ``unwired``, also the working tree as it is
    (this change's modules without the jobs.py/client.py lines)."""
    folder = Path(tempfile.mkdtemp(prefix="gmi-variants-"))
    found = [engine_at(rev, folder), engine_now(folder)]
    if unwired:
        found.append(engine_now(folder, "engine_unwired", wire=False))
    return found
