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
    # no traceback and no ERROR line from any of them (Prefect's "| ERROR |", Dask's "- ERROR -")
    assert "Traceback" not in output, output[-6000:]
    assert not re.search(r"[|-] ERROR [|-]", output), output[-6000:]
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
