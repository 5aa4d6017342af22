"""What the command line shows while it works: one bar per job, updated in place on a terminal, plain lines (one per
stage, and a heartbeat) when piped; and every error as the one line a user reads."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from typing import TextIO

from .errors import GMIError
from .progress import Progress, percent_done

HEARTBEAT_S = 30.0  # piped output: a line at least this often while a stage lasts, never one per poll


class Printer:
    """Progress on stderr; the request id (stdout, or stderr in a batch) as soon as GMI gives it."""

    def __init__(self, prefix: str = "", ids_on_stdout: bool = True, stream: TextIO | None = None,
                 in_place: bool | None = None):
        self.prefix = prefix
        self.ids_on_stdout = ids_on_stdout  # a batch keeps stdout for its summary table
        self.stream = stream or sys.stderr
        self.in_place = self.stream.isatty() if in_place is None else in_place
        self.request_id: str | None = None
        self.percent = 0.0
        self._shape, self._printed_at, self._open_line = "", 0.0, False

    def __call__(self, event: Progress) -> None:
        if event.request_id and event.request_id != self.request_id:
            self.request_id = event.request_id
            self._end_line()
            print(f"{self.prefix}request_id {event.request_id}", flush=True,
                  file=sys.stdout if self.ids_on_stdout else self.stream)
        done = percent_done(event, decoding_follows=False)
        self.percent = max(self.percent, done) if done is not None else self.percent  # a bar never goes back
        line = f"{self.prefix}{bar(self.percent)}{event.text}"
        if self.in_place:
            self.stream.write("\r\x1b[K" + line)
            self._open_line = True
            if event.stage in ("saved", "reused"):
                self._end_line()
            self.stream.flush()
            return
        now, shape = time.monotonic(), re.sub(r"[\d.]+", "#", event.text)  # counters ticking are no news
        if event.text and (shape != self._shape or now - self._printed_at >= HEARTBEAT_S):
            self._shape, self._printed_at = shape, now
            print(line, file=self.stream, flush=True)

    def _end_line(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False

    def close(self) -> None:
        """Ends an in-place line before anything else is printed."""
        self._end_line()
        self.stream.flush()


def bar(percent: float, width: int = 20) -> str:
    """A text progress bar for the whole job (the same stages as the node's bar)."""
    filled = round(width * percent / 100)
    return f"[{'#' * filled}{'.' * (width - filled)}] {percent:3.0f}%  "


def one_line(exc: BaseException) -> str:
    """An error as the one line a user reads: the pack's own message, or what the OS said and about which file."""
    if isinstance(exc, GMIError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or type(exc).__name__}{where}"
    if isinstance(exc, subprocess.CalledProcessError):
        return f"ffmpeg failed (exit {exc.returncode}) writing the extras"
    return f"{type(exc).__name__}: {exc}"
