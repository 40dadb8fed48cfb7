from __future__ import annotations

import numpy as np
import pytest
from data_generation import planted_gap

from aniso.errors import InputError
from aniso.methods import ReAlign
from aniso.quality import diagnostics as dg


def test_planted_residual_detected_and_absent_without_it(gap):
    with_gap = dg.residual_anisotropy(gap.text, gap.image)
    assert with_gap["A_r"] > 5 * with_gap["A_r_baseline"]
    control = planted_gap(gap_rank=1, residual_scale=0.0)
    without = dg.residual_anisotropy(control.text, control.image)
    assert with_gap["A_r"] > 2 * without["A_r"] and with_gap["top5"] > 2 * without["top5"]
    # the top residual directions are the planted ones
    r = (gap.image - gap.text).astype(np.float64)
    w, v = np.linalg.eigh(np.cov(r.T))
    top = v[:, -3:]
    assert dg.subspace_overlap.__name__  # (smoke) and the planted subspace dominates:
    assert np.linalg.norm(gap.residual_dirs.T @ top) ** 2 / 3 > 0.8


def test_raw_vs_aligned(gap):
    raw = dg.diagnose(gap.text, gap.image, paired=True)
    subs = ReAlign().fit(gap.text, gap.image).transform(gap.text)
    aligned = dg.diagnose(gap.text, gap.image, subs, paired=True)
    assert raw["centroid_residual"] > 0.5 and aligned["centroid_residual"] < 2e-3
    assert raw["knn_overlap@10"] == 1.0 and raw["spearman"] == pytest.approx(1.0)
    assert raw["domain_acc"] > 0.95 and raw["knn_mixing"] < 0.05
    assert aligned["knn_mixing"] > raw["knn_mixing"] and aligned["mmd2"] < raw["mmd2"] / 5
    assert aligned["knn_precision"] > raw["knn_precision"]
    assert 0 <= aligned["R@1"] <= aligned["R@5"] <= 1
    assert raw["subspace_overlap@10"] > raw["subspace_overlap@10_baseline"]
    table = dg.format_table({"raw": raw, "realign": aligned})
    assert table.count("\n") == 3 and "| raw |" in table and "domain_acc" in table


def test_metric_properties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 32))
    y = rng.normal(size=(300, 32))
    assert dg.mmd2_rbf(x[:150], x[150:]) == pytest.approx(0.0, abs=5e-3)
    assert dg.domain_classifier_accuracy(x[:150], x[150:]) < 0.65
    assert dg.knn_mixing(x[:150], x[150:]) == pytest.approx(0.5, abs=0.08)
    assert dg.recall_at_k(x, x)["R@1"] == 1.0
    assert dg.paired_cosine(x, x) == pytest.approx(1.0)
    assert dg.knn_overlap(x, y) < 0.2
    o = dg.subspace_overlap(x, y, 8)
    assert o["baseline"] == 8 / 32
    sc = dg.spectral_correlation(x * np.linspace(1, 3, 32), y * np.linspace(1, 3, 32))
    assert sc["log"] > 0.8
    assert dg.diagnose(x, y, seed=1) == dg.diagnose(x, y, seed=1)
    with pytest.raises(InputError):
        dg.diagnose(x, y[:10], paired=True)
    with pytest.raises(InputError):
        dg.centroid_residual(np.full((3, 4), np.nan), x[:, :4])


def test_domain_classifier_by_class_splits_the_accuracy_and_exposes_hubness():
    rng = np.random.default_rng(3)
    d = 32
    mean = np.zeros(d)
    mean[0] = 1.0
    spread = mean + rng.normal(scale=0.5, size=(300, d))
    concentrated = mean + rng.normal(scale=0.1, size=(300, d))
    res = dg.domain_classifier_by_class(concentrated, spread, repeats=5, seed=1)
    assert res["acc"] == pytest.approx((res["acc_s"] + res["acc_t"]) / 2)
    assert res["acc"] == pytest.approx(dg.domain_classifier_accuracy(concentrated, spread, repeats=5, seed=1))
    # the concentrated set is recognised, the spread one is mostly taken for it (hub neighbours)
    assert res["acc_s"] > 0.9 and res["acc_t"] < res["acc_s"] - 0.3
    same = dg.domain_classifier_by_class(spread[:150], spread[150:], repeats=5, seed=1)
    assert abs(same["acc_s"] - same["acc_t"]) < 0.2 and abs(same["acc"] - 0.5) < 0.1


def test_neighbour_overlap_counts_shared_neighbours_against_a_reference_found_once():
    """The kNN overlap the diagnostics, the kNN budget and the matched refinement's floor share:
    identical rows keep every neighbour, a reversed neighbourhood order changes nothing, and the
    overlap of two sets is the same whether the reference is passed in or found from the rows."""
    from aniso.numeric.neighbours import knn_indices, neighbour_overlap

    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = x + 0.3 * rng.normal(size=x.shape)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    ref = knn_indices(x, x, 10, exclude_self=True)
    assert neighbour_overlap(ref, x) == 1.0 and neighbour_overlap(ref[:, ::-1], x) == 1.0
    expected = np.mean([len(set(ref[i]) & set(knn_indices(y, y, 10, exclude_self=True)[i])) for i in range(120)]) / 10
    assert neighbour_overlap(ref, y) == pytest.approx(expected) == dg.knn_overlap(x, y)
    assert 0.0 < expected < 1.0
