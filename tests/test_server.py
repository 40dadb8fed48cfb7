"""The local Prefect server the CLI starts early (flows/_server.py): used, stopped, and refused
when it should not start."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from aniso.errors import AnisoError
from aniso.flows import _server


def _answers(port: int) -> bool:
    """Whether anything still listens on the loopback ``port`` the test's own CLI server used
    (no other process on the machine is looked at)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


#: per command: its arguments (run in a folder holding text.npy, image.npy and captions.jsonl) and
#: what it leaves behind
COMMANDS = {
    "produce": (["produce", "--text", "text.npy", "--image", "image.npy", "--out", "store", "--dataset", "srv",
                 "--method", "realign"], "store/srv/published/LATEST"),
    "embed": (["embed", "--text", "captions.jsonl", "--out", "store", "--dataset", "srv"], "store/srv/corpus/text"),
}


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_boots_the_server_early_uses_it_and_stops_it(tmp_path, gap, command):
    """Each flow-running command uses its own early server, twice (the second run resumes; an
    ``embed`` rerun with nothing left to embed once logged "Error logging to API" at exit: its run
    was on Prefect's temporary server, stopped before the run's last logs were sent)."""
    np.save(tmp_path / "text.npy", gap.text)
    np.save(tmp_path / "image.npy", gap.image)
    (tmp_path / "captions.jsonl").write_text("".join(f'{{"id": "c{k}", "text": "a red square number {k}"}}\n'
                                                     for k in range(37)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no profile naming an API URL
    cli = Path(sys.executable).with_name("aniso")
    args, leaves = COMMANDS[command]
    for _ in range(2):
        result = subprocess.run([str(cli), *args, "--profile", "ci", "--verbose"], capture_output=True, text=True,
                                cwd=tmp_path, env=env, timeout=600)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-3000:]
        ready = re.search(r"local Prefect server ready on http://127\.0\.0\.1:(\d+)/api", output)
        assert ready, output[-3000:]
        # the flow ran against that server: Prefect did not start a temporary one of its own
        assert "Starting temporary server" not in output
        assert "Error logging to API" not in output, output[-3000:]
        assert (tmp_path / leaves).exists()
        assert not _answers(int(ready.group(1)))  # stopped at exit


def test_nothing_starts_when_prefect_is_loaded_or_a_url_is_configured(tmp_path, monkeypatch):
    import prefect  # noqa: F401 - once imported, Prefect's settings are fixed: too late to point them anywhere

    assert _server.start_local_server() is None
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert not _server._profile_sets_api_url()
    (tmp_path / "profiles.toml").write_text(
        'active = "remote"\n[profiles.remote]\nPREFECT_API_URL = "http://prefect.internal:4200/api"\n')
    assert _server._profile_sets_api_url()
    monkeypatch.setenv("PREFECT_PROFILE", "other")
    assert not _server._profile_sets_api_url()


def test_a_server_that_dies_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    server = _server.LocalServer(str(Path(__file__).parent))
    try:
        assert os.environ["PREFECT_API_URL"] == server.api_url
        server.process.kill()
        server.process.wait()
        with pytest.raises(AnisoError, match=r"local Prefect server .* exited with code"):
            server.wait(timeout=30)
    finally:
        server.stop()
    assert os.environ.get("PREFECT_API_URL") != server.api_url


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE  # exited; only its parent's wait is missing
    except psutil.NoSuchProcess:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_the_server_does_not_outlive_a_killed_cli(tmp_path, gap):
    """``kill -9`` of the CLI skips its atexit stop; the server it started must still go."""
    import signal
    import time

    np.save(tmp_path / "text.npy", gap.text)
    np.save(tmp_path / "image.npy", gap.image)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    cli = subprocess.Popen(
        [str(Path(sys.executable).with_name("aniso")), "produce", "--text", "text.npy", "--image", "image.npy",
         "--out", "store", "--dataset", "kill", "--profile", "ci", "--method", "realign"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        server = None
        deadline = time.monotonic() + 120
        while server is None and time.monotonic() < deadline and cli.poll() is None:
            for child in psutil.Process(cli.pid).children(recursive=True):  # the run is a child of the CLI
                try:
                    if "prefect.server.api.server:create_app" in child.cmdline():
                        server = child
                except psutil.NoSuchProcess:
                    continue
            time.sleep(0.05)
        assert server is not None, "the CLI started no server of its own"
        time.sleep(1.0)  # let it get past its launcher into uvicorn
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(timeout=30)
        deadline = time.monotonic() + 10
        while not _gone(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(server), f"server {server.pid} outlived the killed CLI {cli.pid}"
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        if server is not None and not _gone(server):
            server.kill()  # only the server this test's CLI started
