"""The gate stage is bounded in d: a 200 × 8192 run (an in-place .npy input) completes its gates
and report (it did not finish in 26 minutes when the report eigen-decomposed d × d matrices)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from aniso.config import GateSettings
from aniso.io.layout import DatasetLayout
from aniso.methods import get_aligner
from aniso.quality.report_numbers import _cov, residual_spectrum, spectrum
from aniso.stages import apply as apply_stage
from aniso.stages import gate as gate_stage
from aniso.stages import ingest as ingest_stage
from aniso.testing.synthetic import planted_gap


@pytest.mark.slow
def test_gates_and_report_at_d8192(tmp_path):
    gap = planted_gap(n=200, d=8192, latent=8, seed=3)
    np.save(tmp_path / "text.npy", gap.text.astype(np.float16))
    np.save(tmp_path / "image.npy", gap.image.astype(np.float16))
    urls = {}
    for name in ("text", "image"):
        ref, _ = ingest_stage.prepare_input(
            str(tmp_path / f"{name}.npy"), DatasetLayout(str(tmp_path), "ds"), modality=name,
            chunk_rows=64, shard_rows=128, storage_options={})
        urls[name] = ref.url
    model = str(tmp_path / "model")
    get_aligner("realign").fit(gap.text, gap.image).save(model)
    subs = str(tmp_path / "subs.zarr")
    for shard in apply_stage.prepare_substitutes(subs, urls["text"], attrs={}, dtype="float32", compressor="zstd",
                                              storage_options={}):
        apply_stage.apply_shard(model, urls["text"], subs, shard, {})
    result = gate_stage.gate_run(model, urls["text"], subs, str(tmp_path / "quality"), GateSettings(), {},
                               image_store_url=urls["image"])
    assert result["metrics"]["sample_rows"] == 200
    assert math.isfinite(result["metrics"]["knn_overlap_10"]) and math.isfinite(result["metrics"]["mmd2"])
    report = json.loads((tmp_path / "quality" / "report.json").read_text())
    assert len(report["spectra"]["substitutes"]) == 128 and len(report["residual_spectrum"]["after"]) == 128
    assert report["spectra"]["text"][0] >= report["spectra"]["text"][-1] >= 0


def test_factor_spectra_equal_the_covariance_ones_when_d_exceeds_n():
    """The bounded-in-d path (sample factors) gives the d × d covariance's leading eigenvalues."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 120)) + 1, rng.normal(size=(50, 120)) * 0.5
    np.testing.assert_allclose(spectrum(a)[:40], spectrum(None, cov=_cov(a))[:40], atol=1e-12)
    got, want = residual_spectrum(a, b), residual_spectrum(None, None, cov_a=_cov(a), cov_b=_cov(b))
    np.testing.assert_allclose(got[:90], want[:90], atol=1e-12)
