"""The process-worker walk-through of ``infra/README.md``, run as it stands.

The test reads the bash block after the ``<!-- walkthrough: ... -->`` marker and runs it with
``bash -e`` in a temporary ``HOME`` that holds what the block assumes (``~/aniso``: this checkout,
``~/aniso-work/inputs``: two arrays). The only edits are the ports: free ones in place of the
Prefect server's 4200 and the Dask scheduler's 8786, and the loopback S3 server of this test in
place of 9000. Everything the block starts is a separate process in the process group of that
bash (a real ``prefect server``, ``dask scheduler`` and two ``dask worker``, a process worker
running the flow runs), which the test ends afterwards. Slow (minutes on a 2-core machine).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aniso.testing.ports import free_port
from aniso.testing.processes import prefect_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "infra" / "README.md"
MARKER = "<!-- walkthrough: tests/test_walkthrough.py -->"
RUN_TIMEOUT_S = 1500
PORTS = {"4200": "the Prefect server", "8786": "the Dask scheduler", "9000": "the S3 server"}


def walkthrough_block() -> str:
    """The bash block that follows the marker in ``infra/README.md``."""
    text = GUIDE.read_text()
    assert MARKER in text, f"{GUIDE}: no {MARKER!r}"
    match = re.search(r"```bash\n(.*?)```", text[text.index(MARKER):], re.S)
    assert match, f"{GUIDE}: no bash block after the marker"
    return match.group(1)


def _end_group(pgid: int, grace_s: float = 30) -> None:
    """SIGTERM, then SIGKILL, to the process group this test started; wait until it is empty."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)


_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| ")
_SERVER_ERROR = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| ERROR\s+\| prefect\.server\b")


def server_lock_errors(output: str) -> tuple[str, list[str]]:
    """``output`` without the Prefect server's own ``database is locked`` reports, and those reports.

    Prefect's SQLite backend logs an ``OperationalError: database is locked`` (with its traceback)
    when two of its writers meet, e.g. a worker's heartbeat beside a flow run's state change; the
    client retries and the run goes on (a known limitation of Prefect's SQLite server, upstream
    issue 18934; a production server uses PostgreSQL). Only a report that starts with a
    ``prefect.server`` ERROR line and names that error is taken out; anything else stays.
    """
    kept: list[str] = []
    dropped: list[str] = []
    block: list[str] | None = None

    def close() -> None:
        if block is not None:
            text = "\n".join(block)
            if "(sqlite3.OperationalError) database is locked" in text:
                dropped.append(text)
            else:
                kept.extend(block)

    for line in output.splitlines():
        if _LOG_LINE.match(line):
            close()
            block = [line] if _SERVER_ERROR.match(line) else None
            if block is None:
                kept.append(line)
        elif block is not None:
            block.append(line)
        else:
            kept.append(line)
    close()
    return "\n".join(kept), dropped


def _around(output: str, needle: str, width: int = 3000) -> str:
    """The part of ``output`` around the first ``needle`` (an assertion's message)."""
    at = output.find(needle)
    return output[max(0, at - width // 3): at + width] if at >= 0 else output[-width:]


def test_server_lock_errors_takes_out_only_the_servers_database_locked_reports():
    locked = ("12:00:01.000 | ERROR   | prefect.server - Encountered exception in request:\n"
              "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
              "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database is locked")
    ours = ("12:00:02.000 | ERROR   | Task run 'apply' - boom\n"
            "Traceback (most recent call last):\nValueError: boom")
    server_other = ("12:00:03.000 | ERROR   | prefect.server - Encountered exception in request:\n"
                    "Traceback (most recent call last):\nsqlalchemy.exc.OperationalError: disk I/O error")
    info = "12:00:04.000 | INFO    | Flow run 'x' - Finished in state Completed()"
    rest, dropped = server_lock_errors("\n".join([locked, ours, server_other, info]))
    assert dropped == [locked]
    assert rest == "\n".join([ours, server_other, info])


def test_the_block_names_every_port_it_uses():
    block = walkthrough_block()
    for port, what in PORTS.items():
        assert port in block, f"{what} ({port}) is not in the walk-through"
    assert "prefect deploy" in block and "prefect worker start --pool aniso-process" in block
    assert "dask scheduler" in block and block.count("dask worker") == 2


def test_readme_walkthrough_publishes_from_relative_and_absolute_inputs(tmp_path, gap, moto_server):
    import s3fs

    from aniso import open_published

    if shutil.which("curl") is None:
        pytest.skip("the walk-through waits for the server with curl, which this machine lacks")
    s3 = s3fs.S3FileSystem(endpoint_url=moto_server)
    if not s3.exists("aniso-data"):
        s3.mkdir("aniso-data")
    s3fs.S3FileSystem.clear_instance_cache()

    home = tmp_path / "home"
    (home / "aniso-work" / "inputs").mkdir(parents=True)
    (home / "aniso").symlink_to(REPO, target_is_directory=True)
    np.save(home / "aniso-work" / "inputs" / "text.npy", gap.text)
    np.save(home / "aniso-work" / "inputs" / "image.npy", gap.image)

    script = walkthrough_block()
    ports = {"4200": str(free_port()), "8786": str(free_port()),
             "9000": moto_server.rsplit(":", 1)[1]}
    for old, new in ports.items():
        script = script.replace(old, new)

    # Prefect's defaults for this HOME (~/.prefect), no AWS_ or ANISO_ variables from elsewhere
    env = {k: v for k, v in prefect_env(home / ".prefect").items() if not k.startswith(("AWS_", "ANISO_"))}
    env.update(
        HOME=str(home),
        # the environment `source .venv/bin/activate` gives: this interpreter's scripts first
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        AWS_DEFAULT_REGION="us-east-1",
    )
    log = tmp_path / "walkthrough.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=home, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            try:
                rc = proc.wait(RUN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                rc = None
            # what the walk-through printed, before the test stops the processes it left running
            output = log.read_text(errors="replace")
        finally:
            _end_group(proc.pid)
    assert rc == 0, f"the walk-through exited with {rc}:\n{output[-6000:]}"

    # both deployment runs completed, on the external scheduler
    assert output.count("Flow run finished successfully") == 2, output[-6000:]
    assert f"tcp://127.0.0.1:{ports['8786']}" in output
    # no traceback and no ERROR line from any of them (Prefect's "| ERROR |", Dask's "- ERROR -"),
    # but for the Prefect server's own SQLite lock reports (see server_lock_errors)
    output, lock_reports = server_lock_errors(output)
    if lock_reports:
        print(f"the Prefect server reported {len(lock_reports)} SQLite lock(s); the runs went on:\n{lock_reports[0]}")
    assert "Traceback" not in output, _around(output, "Traceback")
    error = re.search(r"[|-] ERROR\s*[|-]", output)
    assert not error, _around(output, error.group(0))
    # the relative run wrote under the worker's directory, the absolute one to the bucket; the
    # same inputs and method give the same substitutes on both
    local_root = home / "aniso-work" / "aniso-data"
    assert (local_root / "local" / "published" / "LATEST").exists()
    with open_published(str(local_root), "local", lease_s=None) as local, \
            open_published("s3://aniso-data/store", "local", storage_options={"endpoint_url": moto_server},
                           lease_s=None) as remote:
        assert local.embedding.shape == remote.embedding.shape == gap.text.shape
        np.testing.assert_array_equal(np.asarray(local.embedding[:]), np.asarray(remote.embedding[:]))
        assert list(local.ids) == list(remote.ids)
    # nothing the block started outlives the test, and it wrote nothing into the checkout
    assert not (REPO / "aniso-data").exists() and not (REPO / "inputs").exists()
