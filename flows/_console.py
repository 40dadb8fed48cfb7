"""What the ``aniso`` command line shows: one log format, the progress display, number formatting.

Kept apart from :mod:`aniso.flows.cli` (the commands) so that output changes and new commands
merge independently.

* Logs go to stderr in one format for every command and every library (aniso, Prefect, Dask):
  ``HH:MM:SS LEVEL   logger: message``. An expected failure (an :class:`aniso.errors.AnisoError`)
  is logged without its traceback; the CLI prints it as one line.
* Progress goes to stderr: a live display on a terminal, otherwise one plain log line per stage
  every :data:`PLAIN_INTERVAL` seconds plus its start and end (schedulers, CI, ``| tee``).
* Results go to stdout.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aniso.progress import ProgressEvent, format_duration, format_event, format_rows, set_callback

__all__ = ["LOG_FORMAT", "configure_logging", "progress_display", "notice"]

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
#: Seconds between two plain progress lines of one stage when stderr is not a terminal.
PLAIN_INTERVAL = float(os.environ.get("ANISO_PROGRESS_INTERVAL", "5"))
#: Loggers whose INFO chatter only ``--verbose`` shows.
_NOISY = ("prefect", "distributed", "httpx", "great_expectations", "uvicorn", "fastapi", "asyncio", "urllib3",
          "botocore", "s3fs", "fsspec", "numexpr")
#: Informational messages the CLI always shows (the dashboard link, where the report is).
NOTICE = "aniso.notice"


class StderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is *now* (the live progress display
    redirects it so log lines print above the bars)."""

    def __init__(self, **_: Any) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class ExpectedErrorFilter(logging.Filter):
    """Drop the traceback of an expected failure (an AnisoError, e.g. a failed gate): the CLI
    reports it as one line, and a third-party traceback before it only hides the reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _is_expected(exc):
            return False
        return True


def _is_expected(exc: BaseException) -> bool:
    from aniso.errors import AnisoError

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, AnisoError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def configure_logging(verbose: bool = False) -> None:
    """One stderr handler on the root logger, one format; third-party INFO only with ``verbose``.

    Idempotent; call it again after importing Prefect (whose import installs its own console
    handler on the root logger).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    handler.addFilter(ExpectedErrorFilter())
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        # a flow run's failure is logged with a traceback by Prefect; the CLI says it in one line
        logging.getLogger("prefect").setLevel(logging.CRITICAL)
    for name in ("uvicorn", "fastapi", "prefect._internal"):  # Prefect gives these their own handlers
        other = logging.getLogger(name)
        for h in list(other.handlers):
            other.removeHandler(h)
        other.propagate = True
    logging.getLogger("aniso").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger(NOTICE).setLevel(logging.INFO)
    logging.getLogger("aniso.progress").setLevel(logging.INFO)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.INFO if verbose else logging.ERROR)


def notice(message: str, *args: Any) -> None:
    """Log a message every run shows (not only with ``--verbose``)."""
    logging.getLogger(NOTICE).info(message, *args)


# -- progress -------------------------------------------------------------------------------
class _PlainProgress:
    """One log line per stage at its start, every ``interval`` seconds, and at its end.

    A heartbeat thread repeats the latest figures of a stage that reported nothing for
    ``interval`` seconds (a one-task stage such as fit or gates), with the time elapsed.
    """

    def __init__(self, interval: float, heartbeat: bool = True) -> None:
        self.interval = interval
        self.logger = logging.getLogger("aniso.progress")
        self._last: dict[str, float] = {}
        self._latest: dict[str, tuple[ProgressEvent, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if heartbeat and interval > 0:
            self._thread = threading.Thread(target=self._beat, name="aniso-progress", daemon=True)
            self._thread.start()

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        with self._lock:
            first = event.stage not in self._last
            due = now - self._last.get(event.stage, -math.inf) >= self.interval
            if event.finished:
                self._latest.pop(event.stage, None)
            else:
                self._latest[event.stage] = (event, now - event.elapsed)
            if not (first or due or event.finished):
                return
            if event.finished:
                self._last.pop(event.stage, None)
            else:
                self._last[event.stage] = now
        if first and not event.finished and event.done == 0:
            self.logger.info("%s: %s rows, started", event.stage, format_rows(event.total))
        else:
            self.logger.info("%s", format_event(event))

    def _beat(self) -> None:
        while not self._stop.wait(min(self.interval, 1.0)):
            now = time.monotonic()
            due = []
            with self._lock:
                for stage, (event, started) in self._latest.items():
                    if now - self._last.get(stage, now) >= self.interval:
                        self._last[stage] = now
                        due.append(ProgressEvent(event.stage, event.done, event.total, now - started))
            for event in due:
                self.logger.info("%s", format_event(event))

    def close(self) -> None:
        """Stop the heartbeat."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


@contextmanager
def _live_progress() -> Iterator[None]:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description:<24}"), BarColumn(bar_width=30),
        TextColumn("{task.fields[rows]:>17}"), TextColumn("{task.fields[rate]:>12}"), TextColumn("{task.fields[eta]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(file=sys.stderr), transient=False, refresh_per_second=4,
                  redirect_stderr=True, redirect_stdout=False) as bar:
        tasks: dict[str, Any] = {}

        def on_progress(event: ProgressEvent) -> None:
            if event.stage not in tasks or (event.done == 0 and bar.tasks[tasks[event.stage]].finished):
                tasks[event.stage] = bar.add_task(event.stage, total=max(event.total, 1), rows="", rate="", eta="")
            rate = event.rate
            eta = ("done" if event.finished else f"ETA {format_duration(event.eta)}" if event.eta is not None else "")
            bar.update(tasks[event.stage], completed=event.done if event.total else 1,
                       rows=f"{format_rows(event.done)}/{format_rows(event.total)} rows",
                       rate="" if rate is None else f"{format_rows(rate)} rows/s", eta=eta)

        previous = set_callback(on_progress)
        try:
            yield
        finally:
            _restore(previous)


def _restore(previous: list) -> None:
    from aniso.progress import add_callback

    set_callback(None)
    for callback in previous:
        add_callback(callback)


@contextmanager
def progress_display(live: bool | None = None) -> Iterator[None]:
    """Show :mod:`aniso.progress` events while the block runs: live on a terminal, plain lines
    otherwise (``live`` forces either)."""
    if live is None:
        live = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
    if live:
        with _live_progress():
            yield
        return
    plain = _PlainProgress(PLAIN_INTERVAL)
    previous = set_callback(plain)
    try:
        yield
    finally:
        plain.close()
        _restore(previous)


# -- exit -----------------------------------------------------------------------------------
def fast_exit(code: Any = 0) -> None:
    """Run the exit handlers, flush, and end the process without interpreter finalisation.

    After a run the interpreter holds ~900k objects (torch, Prefect, Great Expectations, Dask);
    tearing them down (``Py_FinalizeEx``: module clean-up with several full garbage collections)
    took 10-20 s after the result was printed. Nothing of ours needs it: the exit handlers
    (Prefect's ephemeral server, logging) run first, and files are closed by then.
    """
    import atexit

    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed pipe must not change the exit code
                pass
        os._exit(code)


# -- --help ---------------------------------------------------------------------------------
_TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "Path": "PATH", "bool": ""}


def install_help_style() -> None:
    """``--help`` without ``<bool>``/``<str>`` placeholders: flags show no type, options their
    metavar or a plain type name (TEXT, INTEGER, PATH); repeatable ones say so."""
    from typer.core import TyperOption

    if getattr(TyperOption, "_aniso_help", False):
        return

    def display_type_rich(self, ctx):  # noqa: ANN001, ANN202
        if self.metavar is not None:
            return self.metavar
        if self.is_flag:
            return None
        try:
            label = self.display_type(ctx).strip("<>")
        except Exception:  # noqa: BLE001
            return None
        repeat = label.startswith("list[")
        label = label.removeprefix("list[").removesuffix("]")
        label = "|".join(_TYPE_NAMES.get(part, part.upper()) for part in label.split("|"))
        return f"{label} (repeatable)" if repeat else label

    TyperOption.display_type_rich = display_type_rich
    TyperOption._aniso_help = True
    from typer.core import TyperArgument

    # an argument's metavar is its name (ROOT): show only its plain type beside it
    TyperArgument.display_type_rich = lambda self, ctx: display_type_rich(  # noqa: ARG005
        type("_Plain", (), {"metavar": None, "is_flag": False, "display_type": self.display_type})(), ctx)
