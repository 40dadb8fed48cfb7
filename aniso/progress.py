"""Progress reporting (fsspec-callback style): the library and the flows report, front-ends display.

Every stage reports in **rows** (not shards or tasks): :func:`report` ``(stage, done, total)``
with the rows completed so far and the stage's total. This module keeps, per stage, when it
started, and turns each report into a :class:`ProgressEvent` carrying the rate (rows/s) and the
ETA; the installed callback (the CLI's live display or plain lines, a flow's Prefect progress
artifact) receives those events. With no callback installed, reporting only updates the clock.

A stage that runs as one task (fit, gates, publish) reports ``0`` before and ``total`` after;
its rate is then the rows it covered per second of wall time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ProgressEvent", "ProgressCallback", "set_callback", "add_callback", "remove_callback", "report",
           "reset", "format_rows", "format_duration", "format_event"]


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report of a stage.

    Attributes
    ----------
    stage
        Stage name, e.g. ``"embed text"``, ``"fit"``, ``"gates"``.
    done, total
        Rows completed so far and rows the stage covers.
    elapsed
        Seconds since the stage's first report.
    """

    stage: str
    done: int
    total: int
    elapsed: float

    @property
    def finished(self) -> bool:
        """Whether every row of the stage is done."""
        return self.done >= self.total

    @property
    def fraction(self) -> float:
        """Done/total in [0, 1] (1 for an empty stage)."""
        return 1.0 if self.total <= 0 else min(self.done / self.total, 1.0)

    @property
    def rate(self) -> float | None:
        """Rows per second so far; ``None`` before any row is done."""
        if self.done <= 0 or self.elapsed <= 0:
            return None
        return self.done / self.elapsed

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate; ``0`` when finished, ``None`` when unknown."""
        if self.finished:
            return 0.0
        rate = self.rate
        return None if rate is None else (self.total - self.done) / rate


ProgressCallback = Callable[[ProgressEvent], None]
_callbacks: list[ProgressCallback] = []
_started: dict[str, float] = {}
_lock = threading.Lock()


def set_callback(callback: ProgressCallback | None) -> list[ProgressCallback]:
    """Replace every installed callback by ``callback`` (none when ``None``); returns the old list."""
    with _lock:
        previous = list(_callbacks)
        _callbacks[:] = [] if callback is None else [callback]
    return previous


def add_callback(callback: ProgressCallback) -> None:
    """Install one more callback (e.g. a Prefect artifact beside the terminal display)."""
    with _lock:
        _callbacks.append(callback)


def remove_callback(callback: ProgressCallback) -> None:
    """Remove a callback installed with :func:`add_callback` (no error when absent)."""
    with _lock:
        if callback in _callbacks:
            _callbacks.remove(callback)


def reset(stage: str | None = None) -> None:
    """Forget the start time of ``stage`` (of every stage when ``None``)."""
    with _lock:
        if stage is None:
            _started.clear()
        else:
            _started.pop(stage, None)


def report(stage: str, done: int, total: int) -> ProgressEvent:
    """Report ``done`` of ``total`` rows of ``stage``; returns the event sent to the callbacks.

    The stage's clock starts at its first report (or when ``done`` is 0 again, i.e. a stage
    that runs a second time starts afresh).
    """
    now = time.monotonic()
    with _lock:
        if stage not in _started or done <= 0:
            _started[stage] = now
        event = ProgressEvent(stage, int(done), int(total), now - _started[stage])
        if event.finished:
            _started.pop(stage, None)
        callbacks = list(_callbacks)
    for callback in callbacks:
        callback(event)
    return event


# -- formatting (shared by the CLI, the Prefect artifacts and the logs) ---------------------
def format_rows(n: float) -> str:
    """``1234567`` → ``"1.23M"``; small counts stay exact (``"950"``)."""
    n = float(n)
    for bound, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= bound:
            return f"{n / bound:.3g}{suffix}"
    return f"{n:.0f}" if n == int(n) else f"{n:.3g}"


def format_duration(seconds: float | None) -> str:
    """``75.2`` → ``"1m15s"``; ``None`` → ``"?"``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_event(event: ProgressEvent) -> str:
    """One plain line: ``"apply: 12.0k/40.0k rows (30%), 850 rows/s, ETA 33s"``."""
    rate = event.rate
    head = f"{event.stage}: {format_rows(event.done)}/{format_rows(event.total)} rows ({100 * event.fraction:.0f}%)"
    if event.finished:
        speed = f", {format_rows(rate)} rows/s" if rate is not None else ""
        return f"{head} done in {format_duration(event.elapsed)}{speed}"
    if rate is None:
        return f"{head}, {format_duration(event.elapsed)} elapsed"
    return f"{head}, {format_rows(rate)} rows/s, ETA {format_duration(event.eta)}"
