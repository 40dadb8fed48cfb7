"""Producing from precomputed embeddings needs no torch (issue: a 6.4 GB install, 3.2 GB of it
CUDA wheels, for a job that needs no GPU). A real CLI subprocess runs with ``torch`` made
unimportable (a package of that name that raises ModuleNotFoundError, first on PYTHONPATH, so
every process of the run, Dask workers included, sees no torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CLI = Path(sys.executable).with_name("aniso")
pytestmark = pytest.mark.slow


@pytest.fixture
def no_torch_env(tmp_path):
    fake = tmp_path / "no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(fake.parent))
    return env


def _run(args, tmp_path, env):
    return subprocess.run([str(CLI), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_precomputed_embeddings_publish_without_torch(tmp_path, gap, no_torch_env):
    check = subprocess.run([sys.executable, "-c", "import torch"], env=no_torch_env, capture_output=True, text=True)
    assert check.returncode != 0 and "No module named 'torch'" in check.stderr
    np.save(tmp_path / "text.npy", gap.text)
    np.save(tmp_path / "image.npy", gap.image)
    base = ["produce", "store", "--text", "text.npy", "--image", "image.npy", "--profile", "ci"]
    # the default method (AnisoAlign's closed form)
    result = _run([*base, "--dataset", "nt"], tmp_path, no_torch_env)
    assert result.returncode == 0, result.stderr[-3000:]
    latest = json.loads((tmp_path / "store" / "nt" / "published" / "LATEST").read_text())
    manifest = json.loads((tmp_path / "store" / "nt" / latest["manifest"]).read_text())
    assert manifest["lineage"]["method"] == "anisoalign" and manifest["n_rows"] == len(gap.text)
    # the removed learned stages: refused before any work, in one line saying why
    learned = _run([*base, "--dataset", "nl", "--set", "method.params.learned=true"], tmp_path, no_torch_env)
    assert learned.returncode == 2, learned.stderr[-3000:]
    lines = [line for line in learned.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(lines) == 1 and "learned stages" in lines[0] and "were removed" in lines[0], learned.stderr[-3000:]
    assert not (tmp_path / "store" / "nl").exists()
    # a stage that needs torch: one line naming the extra, before any work
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps({"id": str(i), "caption": f"a photo {i}"}) + "\n"
                                                     for i in range(20)))
    corpus = _run(["produce", "store", "--text", "captions.jsonl", "--image", "image.npy", "--profile", "ci",
                   "--dataset", "nc"], tmp_path, no_torch_env)
    assert corpus.returncode == 2, corpus.stderr[-3000:]
    lines = [line for line in corpus.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(lines) == 1 and 'pip install "aniso[embed]"' in lines[0], corpus.stderr[-3000:]
