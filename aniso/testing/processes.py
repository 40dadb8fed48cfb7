"""Separate processes for end-to-end tests: a real ``prefect server`` on a free loopback port, and
helpers to start, wait for and stop processes that a test owns (each in a process group of its
own, so a test ends what it started and nothing else)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aniso.testing.ports import free_port

__all__ = ["prefect_env", "prefect_server", "start_logged", "stop_group", "wait_for"]

#: ``{name: (process, its log file)}``: what :func:`wait_for` watches while it waits.
Processes = dict[str, tuple[subprocess.Popen, Path]]


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """This environment without ``PREFECT_*``, with ``PREFECT_HOME=home`` (no profile from
    elsewhere), quiet analytics, no UI, and ``PREFECT_API_URL`` when given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        PREFECT_API_REQUEST_TIMEOUT="120",
        GX_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def start_logged(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start ``args`` in a session (and process group) of its own, stdout and stderr to ``log``."""
    return subprocess.Popen(args, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM the process group ``proc`` leads (one this test started), SIGKILL after ``grace_s``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def wait_for(what: str, check: Callable[[], Any], timeout: float, procs: Processes) -> Any:
    """Poll ``check`` every 2 s until it returns something truthy, which is returned.

    Raises
    ------
    AssertionError
        When one of ``procs`` exits first, or after ``timeout`` seconds; with the logs' tails.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, (proc, log) in procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode} while waiting for {what}:\n"
                                     + log.read_text(errors="replace")[-4000:])
        value = check()
        if value:
            return value
        time.sleep(2)
    logs = "\n".join(f"--- {n}\n{log.read_text(errors='replace')[-3000:]}" for n, (_, log) in procs.items())
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")


@contextmanager
def prefect_server(workdir: Path, timeout: float = 300) -> Iterator[tuple[str, dict[str, str], Processes]]:
    """``prefect server start`` on a free loopback port, ``PREFECT_HOME`` under ``workdir``.

    Yields ``(api_url, env, procs)``: the API URL, an environment pointing at it (for the
    processes the test starts) and the processes to watch (the server; add your own).
    """
    import httpx

    home = workdir / "prefect-home"
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log = workdir / "server.log"
    proc = start_logged([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                         str(port)], prefect_env(home), log)
    procs: Processes = {"prefect server": (proc, log)}

    def healthy() -> bool:
        try:
            return httpx.get(f"{api_url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for("the Prefect server", healthy, timeout, procs)
        yield api_url, prefect_env(home, api_url), procs
    finally:
        stop_group(proc)
