"""Start the local Prefect server before Prefect is imported, so it boots while the CLI works.

Without ``PREFECT_API_URL`` a flow run starts a temporary Prefect server (a uvicorn subprocess)
only when it first needs the API, after Prefect and the flows are imported, and then waits for
it: on this project's 2-core machine ~4 s of imports followed by ~6 s of server boot, in series.
:func:`start_local_server` launches the same server process (the uvicorn command Prefect's
``SubprocessASGIServer`` runs) as soon as a command knows it will run a flow, and points
``PREFECT_API_URL`` at it, so the server boots on the other core while the main process checks
the inputs and imports the flows. It is stopped when the command exits, and on Linux it also
stops when the command is killed (``kill -9``): it asks the kernel for a signal when its parent dies.

Nothing is started when an API URL is configured (environment or the active Prefect profile),
when ephemeral servers are disabled, or when Prefect is already imported in this process (its
settings are fixed then, as in tests under Prefect's harness): the flow run behaves as before.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from aniso.errors import AnisoError

__all__ = ["LocalServer", "start_local_server"]

logger = logging.getLogger(__name__)


#: The server's launcher: on Linux it asks the kernel for SIGTERM when its parent (the CLI) dies,
#: even by SIGKILL, where ``atexit`` never runs; it exits if the parent is already gone, then
#: becomes uvicorn (``exec``: same process, so the server's command line is uvicorn's own).
_DIE_WITH_PARENT = (
    "import os, signal, sys\n"
    "try:\n"
    "    import ctypes\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "except (OSError, AttributeError):\n"
    "    pass  # not Linux: stopped by atexit only\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'uvicorn', *sys.argv[2:]])\n"
)


class LocalServer:
    """A Prefect API server subprocess on a free loopback port; :meth:`wait` before a flow runs."""

    def __init__(self, app_dir: str) -> None:
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self._log = tempfile.TemporaryFile()
        self._started = time.perf_counter()
        # the command and environment of Prefect's own temporary server (SubprocessASGIServer)
        self.process = subprocess.Popen(
            [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), "--app-dir", app_dir, "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                 "PREFECT__SERVER_FINAL": "1"},
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )
        os.environ["PREFECT_API_URL"] = self.api_url
        atexit.register(self.stop)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the server answers ``/health``.

        Raises
        ------
        AnisoError
            The server exited or did not answer within ``timeout`` seconds (default
            ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``, else 180); the message holds
            the end of its output.
        """
        limit = timeout or float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 180))
        deadline = self._started + limit
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        logger.info("local Prefect server ready on %s after %.1f s", self.api_url,
                                    time.perf_counter() - self._started)
                        return
            except OSError:
                pass
            time.sleep(0.1)
        code = self.process.poll()
        self._log.seek(0)
        tail = self._log.read()[-2000:].decode(errors="replace")
        self.stop()
        state = f"exited with code {code}" if code is not None else f"did not answer within {limit:.0f} s"
        raise AnisoError(f"the local Prefect server ({self.api_url}) {state}; its output: {tail.strip() or '(none)'}")

    def stop(self) -> None:
        """Terminate the server (idempotent; also registered with ``atexit``)."""
        if self.process.poll() is None:
            _drain_prefect_clients()
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        if os.environ.get("PREFECT_API_URL") == self.api_url:
            del os.environ["PREFECT_API_URL"]


def _drain_prefect_clients(timeout: float = 10.0) -> None:
    """Send Prefect's queued run logs and events while the server still answers.

    The server's ``atexit`` stop runs before ``logging.shutdown`` (handlers run last-registered
    first), whose Prefect log handler then waited 5 s for a server that was gone (measured: 5 of
    the 25 s of a cold 3,000-row ``produce``), and the last log lines were lost.
    """
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - shutting down: never fail the command here
            logger.debug("could not drain %s: %s", worker.__name__, exc)


def start_local_server() -> LocalServer | None:
    """Start the local server now when a flow run would start one later; else ``None``."""
    if "prefect" in sys.modules or os.environ.get("PREFECT_API_URL"):
        return None
    if os.environ.get("PREFECT_SERVER_EPHEMERAL_ENABLED", "true").lower() in ("0", "false", "no"):
        return None
    if _profile_sets_api_url():
        return None
    spec = importlib.util.find_spec("prefect")
    if spec is None or spec.origin is None:
        return None
    return LocalServer(str(Path(spec.origin).parent.parent))


def _profile_sets_api_url() -> bool:
    """Whether the active Prefect profile names an API URL (read without importing Prefect)."""
    import tomllib

    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return bool((profiles.get("profiles", {}).get(active) or {}).get("PREFECT_API_URL"))
