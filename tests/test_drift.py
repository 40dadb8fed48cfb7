"""The input_drift figures: quiet on the same distribution (anisotropic or isotropic), loud on another."""

from __future__ import annotations

import numpy as np
import pytest

from aniso.errors import ConfigError
from aniso.quality.drift import drift_metrics, judge_drift, load_drift_bounds, reference_from


def _cloud(n, seed, *, mean, scales, rotation=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, mean.size)) * scales
    if rotation is not None:
        x = x @ rotation
    x = x + mean
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("anisotropic", [True, False])
def test_the_next_snapshot_passes_and_another_distribution_fails(anisotropic):
    d = 96
    rng = np.random.default_rng(0)
    mean = rng.normal(size=d)
    scales = np.where(np.arange(d) < 3, 3.0, 1.0) * 0.15 if anisotropic else np.full(d, 0.15)
    image_mean = mean + rng.normal(size=d) * 0.5
    fit = _cloud(1500, 1, mean=mean, scales=scales)
    image = _cloud(1500, 2, mean=image_mean, scales=np.full(d, 0.15))
    mu_text, mu_image = _cloud(20000, 3, mean=mean, scales=scales).mean(0), image.mean(0)
    bounds = load_drift_bounds()
    reference = reference_from(fit, image, int(bounds["top_k"]))

    same = judge_drift(drift_metrics(reference, mu_text, mu_image, _cloud(1500, 4, mean=mean, scales=scales), image), bounds)
    assert all(r["passed"] for r in same), same
    rotation = np.linalg.qr(rng.normal(size=(d, d)))[0]
    other = _cloud(1500, 5, mean=mean[::-1], scales=scales, rotation=rotation)
    results = {r["name"]: r for r in judge_drift(drift_metrics(reference, mu_text, mu_image, other, image), bounds)}
    assert not results["input_drift:text_centroid_shift"]["passed"]
    if anisotropic:  # the leading directions turned
        assert not results["input_drift:text_subspace_overlap"]["passed"]
    assert all(r["meaning"] for r in results.values())


def test_malformed_drift_bounds_name_the_setting(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text("suites: {}\ninput_drift:\n  centroid_shift_max: -1\n")
    with pytest.raises(ConfigError, match=r"input_drift\.centroid_shift_max must be a non-negative number"):
        load_drift_bounds(path)
    path.write_text("suites: {}\ninput_drift:\n  centroid_shift: 0.2\n")
    with pytest.raises(ConfigError, match="'input_drift' must map some of"):
        load_drift_bounds(path)
