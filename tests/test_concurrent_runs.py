"""Two ``produce`` runs on the same inputs at once (a retried deployment, two users): both
succeed and publish a model that loads. Before the model write was atomic, 2 of 4 such pairs
failed ("aligner state ... not a zip file", "calibration mean missing"). The race itself is
timing-dependent; ``tests/test_aligner_contract.py`` reproduces each failure deterministically."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from aniso.config import load_settings
from aniso.flows.produce import produce
from aniso.methods import Aligner
from aniso.published.dataset import open_published

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]


def test_two_runs_on_the_same_inputs_at_once_both_succeed(tmp_path, gap):
    np.save(tmp_path / "text.npy", gap.text[:800])
    np.save(tmp_path / "image.npy", gap.image[:800])
    settings = load_settings(profile="ci", environ={}, overrides=[
        f"storage.root={tmp_path / 'root'}", "storage.dataset=twice", "method.name=realign", "gates.report=false",
        "cluster.n_workers=1"])

    def run(_: int) -> dict:
        return produce(text=str(tmp_path / "text.npy"), image=str(tmp_path / "image.npy"), settings=settings)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, range(2)))
    assert [r["run_key"] for r in results] == [results[0]["run_key"]] * 2
    assert all(r["gates"]["passed"] for r in results)
    model = Aligner.load(results[0]["model"])
    assert model.fitted
    published = open_published(str(tmp_path / "root"), "twice")
    assert published.manifest["n_rows"] == 800 and not published.problems()
