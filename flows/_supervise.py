"""Stopping a CLI run: SIGTERM or SIGINT end every process of the run within seconds, in one line.

A flow run is many processes and threads: the CLI, its local Prefect server, Dask worker
processes (``cluster.processes``), torch's spawned workers. In-process signal handling cannot
stop them reliably: Prefect replaces the SIGTERM handler during a flow run with one that reports
the crash to its API (whose server may be gone, so it retried for minutes and printed hundreds of
lines of tracebacks), and a handler only runs when the main thread returns to Python.

So ``aniso produce`` / ``demo`` / ``embed`` run in a child process in a session of its own, and
the ``aniso`` process only waits for it. On SIGTERM or SIGINT it kills the child's whole process
tree (``SIGKILL``: nothing of the run gets to write after it), prints one line and exits with
``128 + signal`` (143 for SIGTERM, 130 for SIGINT). Killing a run is safe at any point: every
file is written whole (a temporary name renamed into place, one object PUT), a stage's output
counts only once its completion marker exists, and a version is visible only once its manifest
and then ``LATEST`` are written, so nothing is published half-way and the same command resumes.
The child asks the kernel to kill it when the ``aniso`` process dies (Linux), so even ``kill -9``
of the parent leaves nothing running (the local Prefect server follows its own parent).

A flow run killed this way cannot report its end itself. Each flow run of the child notes its id
and API URL in a file the ``aniso`` process named (:func:`note_flow_run`); after the kill the
``aniso`` process sets those runs to ``Cancelled`` on a Prefect server that outlives the run (a
``PREFECT_API_URL`` of an existing server), so the UI does not show a dead run as ``Running``
forever. The CLI's own temporary server ends with the tree, and that step is skipped at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["SUPERVISED", "RUN_COMMANDS", "needs_supervision", "note_flow_run", "supervise"]

#: Set in the child's environment: it runs the command itself.
SUPERVISED = "ANISO_SUPERVISED"
#: Set in the child's environment: the file where its flow runs note their id and API URL.
FLOW_RUNS_FILE = "ANISO_SUPERVISED_FLOW_RUNS"
#: Seconds the ``aniso`` process gives the Prefect API to take a stopped run's final state.
MARK_TIMEOUT_S = 2.0
#: The commands that start flow runs (and so processes beyond the CLI).
RUN_COMMANDS = frozenset({"produce", "demo", "embed"})

_CHILD = (
    "import os, signal, sys\n"
    "try:\n"
    "    import ctypes\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "sys.argv = ['aniso', *sys.argv[2:]]\n"
    "from aniso.flows.cli import main\n"
    "main()\n"
)


def needs_supervision(argv: list[str]) -> bool:
    """Whether ``aniso <argv>`` runs a flow in a supervised child (not already the child, not help)."""
    return (not os.environ.get(SUPERVISED) and bool(argv) and argv[0] in RUN_COMMANDS
            and not any(a in ("--help", "-h") for a in argv))


def supervise(argv: list[str]) -> int:
    """Run ``aniso <argv>`` in a child process; end its process tree on SIGTERM/SIGINT.

    Returns
    -------
    int
        The child's exit code (``128 + n`` when signal ``n`` ended it).
    """
    fd, runs_file = tempfile.mkstemp(prefix="aniso-flow-runs-", suffix=".jsonl")
    os.close(fd)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(os.getpid()), *argv],
                             env={**os.environ, SUPERVISED: "1", FLOW_RUNS_FILE: runs_file}, start_new_session=True)

    def stop(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        started = time.monotonic()
        end_tree(child.pid)
        name = signal.Signals(signum).name
        mark_stopped(runs_file, f"stopped by {name} (aniso CLI): every process of the run was ended; rerun the "
                                "same command to resume")
        Path(runs_file).unlink(missing_ok=True)
        sys.stderr.write(("\n" if sys.stderr.isatty() else "") + f"aniso: stopped by {name} after {time.monotonic() - started:.1f} s of clean-up: every "
                         "process of the run has ended, nothing was published half-way; rerun the same command "
                         "to resume\n")
        sys.stderr.flush()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = child.wait()
    Path(runs_file).unlink(missing_ok=True)
    return 128 - code if code < 0 else code


def note_flow_run() -> None:
    """In a supervised child: note the current flow run's id and API URL for :func:`mark_stopped`."""
    path = os.environ.get(FLOW_RUNS_FILE)
    if not path:
        return
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if flow_run.id and api:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"id": str(flow_run.id), "api": str(api).rstrip("/")}) + "\n")


def mark_stopped(runs_file: str, message: str, timeout: float = MARK_TIMEOUT_S) -> list[str]:
    """Set each flow run noted in ``runs_file`` to ``Cancelled`` (forced) through its API.

    Uses the REST API directly (no Prefect import in a process that is stopping). A server that
    does not answer within ``timeout`` (the CLI's temporary server, ended with the tree) is
    skipped. Returns the ids of the runs whose state was set.
    """
    import httpx

    try:
        records = [json.loads(line) for line in Path(runs_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return []
    headers = {}
    if os.environ.get("PREFECT_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['PREFECT_API_KEY']}"
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    marked = []
    deadline = time.monotonic() + timeout
    for record in records:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            response = httpx.post(f"{record['api']}/flow_runs/{record['id']}/set_state", headers=headers,
                                  auth=tuple(auth.split(":", 1)) if auth and ":" in auth else None, timeout=left,
                                  json={"state": {"type": "CANCELLED", "name": "Cancelled", "message": message},
                                        "force": True})
        except (httpx.HTTPError, KeyError):
            continue
        if response.status_code < 300:
            marked.append(record["id"])
    return marked


def end_tree(pid: int, timeout: float = 5.0) -> None:
    """SIGKILL ``pid``, its process group and every descendant (found before the kill)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with distributed
        psutil = None
    procs = []
    if psutil is not None:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
    try:
        os.killpg(pid, signal.SIGKILL)  # the child leads its own session and process group
    except (ProcessLookupError, PermissionError):
        pass
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    if psutil is not None:
        psutil.wait_procs(procs, timeout=timeout)
    else:  # pragma: no cover
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
