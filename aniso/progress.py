"""Progress reporting hooks (fsspec-callback style): the library reports, front-ends display.

Stages call :func:`report`; the CLI installs a progress bar with :func:`set_callback`, flows
mirror it into a Prefect progress artifact. With no callback installed, reporting is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ProgressCallback", "set_callback", "report"]

ProgressCallback = Callable[[str, int, int], None]
_callback: ProgressCallback | None = None


def set_callback(callback: ProgressCallback | None) -> ProgressCallback | None:
    """Install ``callback(stage, done, total)``; returns the previous one."""
    global _callback
    previous, _callback = _callback, callback
    return previous


def report(stage: str, done: int, total: int) -> None:
    if _callback is not None:
        _callback(stage, done, total)
