"""Packaging as deployed: the wheel's contents, and a non-editable install into a fresh venv that
publishes from another directory with the shipped profiles and gate suites.

The fresh venv reuses the dependencies already installed in the test environment (a ``.pth``
line naming their site-packages), so the test stays offline and fast; aniso itself comes only
from the wheel (checked: nothing is imported from the checkout).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(project_wheel) -> tuple[Path, str]:
    """The wheel built from (a copy of) the checkout, and everything the build printed."""
    return project_wheel


@pytest.fixture(scope="module")
def wheel(built) -> Path:
    return built[0]


def test_core_install_has_no_torch(wheel):
    """torch only with the extras that use it: producing from precomputed embeddings needs none."""
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert not any(r.startswith("torch") for r in core), core
    for extra in ("embed", "learned"):
        assert any(r.startswith("torch") and f'extra == "{extra}"' in r for r in requires), (extra, requires)
    assert not any(r.startswith("torch") and 'extra == "pipeline"' in r for r in requires)


def test_build_prints_no_setuptools_warnings(built):
    """Every folder that ships files is a package of the packaging configuration (pyproject.toml,
    setup.py): setuptools otherwise prints a warning box per folder on every install."""
    log = built[1]
    assert "is absent from the `packages` configuration" not in log, log[-3000:]
    assert "BuildBackendWarning" not in log and "SetuptoolsDeprecationWarning" not in log, log[-3000:]


def test_code_version_is_the_same_installed_from_the_wheel(wheel, tmp_path):
    """The same source gives one code version (and so one run key) whether aniso is installed
    editable (flows/ and tasks/ mapped from the checkout) or from the wheel (under aniso/)."""
    from aniso._version import code_version

    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "site")
    probe = ("import aniso, aniso._version as v; print(aniso.__file__); print(v.code_version())")
    out = subprocess.run([sys.executable, "-S", "-c", probe], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env={**_env(), "PYTHONPATH": str(tmp_path / "site")}, timeout=120).stdout.split()
    assert out[0].startswith(str(tmp_path / "site")), out  # the wheel's copy, not the checkout
    assert out[1] == code_version()


def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    tops = {n.split("/", 1)[0] for n in names}
    # nothing under a generic top-level name; everything under aniso/
    assert {t for t in tops if not t.endswith(".dist-info")} == {"aniso"}, tops
    for shipped in ("default", "ci", "local", "s3", "gates"):
        assert f"aniso/conf/{shipped}.yaml" in names
    for module in ("aniso/flows/produce.py", "aniso/flows/cli.py", "aniso/flows/deployments.py",
                   "aniso/tasks/__init__.py", "aniso/tasks/gate.py", "aniso/stages/preflight.py", "aniso/methods/params.py"):
        assert module in names
    assert any(n.startswith("aniso/demo/weights/") for n in names)
    assert not any(n.startswith(("tests/", "infra/", "bench/", "flows/", "tasks/", "conf/")) for n in names)
    assert "aniso = aniso.flows.cli:main" in entry_points
    for extra in ("pipeline", "embed", "test"):
        assert f"Provides-Extra: {extra}" in metadata
    assert 'Requires-Dist: prefect<3.9,>=3.8.8; extra == "pipeline"' in metadata
    assert "Requires-Dist: numpy<3,>=2.4" in metadata


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new venv with aniso installed non-editable from the wheel (dependencies borrowed)."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the test environment's packages, after the venv's own: aniso resolves to the wheel
    (site / "zz_borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall", "-q", str(wheel)],
                   check=True, timeout=600, env=_env())
    return venv


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    return env


@pytest.mark.slow
def test_installed_package_publishes_from_another_directory(fresh_venv, tmp_path, gap):
    python, cli = fresh_venv / "bin" / "python", fresh_venv / "bin" / "aniso"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [python, "-c", "import aniso, aniso.config as c, aniso.flows.produce as p; "
                       "from prefect.flows import load_flow_from_entrypoint as load; "
                       "print(aniso.__file__); print(c.CONF_DIR); print(load('aniso.flows.produce:produce').name)"],
        check=True, capture_output=True, text=True, cwd=elsewhere, env=_env(), timeout=600,
    ).stdout.split()
    assert all(str(fresh_venv) in line for line in where[:2]), where  # the wheel, not the checkout
    assert str(REPO) not in " ".join(where[:2]) and where[2] == "produce"

    np.save(elsewhere / "text.npy", gap.text)
    np.save(elsewhere / "image.npy", gap.image)
    result = subprocess.run(
        [cli, "produce", "--text", "text.npy", "--image", "image.npy", "--out", "store", "--dataset", "wheel",
         "--profile", "ci", "--method", "realign"],
        capture_output=True, text=True, cwd=elsewhere, env=_env(), timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "published wheel version" in result.stdout
    latest = json.loads((elsewhere / "store" / "wheel" / "published" / "LATEST").read_text())
    manifest = json.loads((elsewhere / "store" / "wheel" / latest["manifest"]).read_text())
    assert manifest["n_rows"] == gap.text.shape[0]
    gates = [r["name"] for r in manifest.get("gates", {}).get("results", [])] or json.dumps(manifest)
    assert "centroid_residual" in str(gates)  # the shipped gate suites ran
