"""Direct tests of AnisoAlign's closed form (the whole model at default settings)."""

from __future__ import annotations

import numpy as np
import pytest

from aniso.errors import InputError
from aniso.methods import AnisoAlign, CentroidShift
from aniso.methods.anisoalign.closed_form import (
    centroid_offset,
    fit_budget,
    fit_closed_form,
    noise_spread,
    ot_log_scales,
    radial_scale,
)
from aniso.numeric.arrays import l2_normalize
from aniso.numeric.moments import Moments
from aniso.quality.diagnostics import centroid_residual, domain_classifier_accuracy, knn_overlap


def _moments(x: np.ndarray) -> Moments:
    return Moments.from_chunk(x)


def _pair(n: int, d: int, seed: int, ratio: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Text and image clouds on the sphere; ``ratio`` scales the image's residual per axis."""
    rng = np.random.default_rng(seed)
    mu_t, mu_i = np.zeros(d), np.zeros(d)
    mu_t[0], mu_i[1] = 3.0, 3.0
    scale = np.ones(d) if ratio is None else ratio
    return mu_t + rng.normal(size=(n, d)), mu_i + rng.normal(size=(n, d)) * scale


def test_ot_map_transports_text_covariance_onto_image_covariance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 12)), rng.normal(size=(40, 12))
    st, si = a.T @ a / 40 + 0.1 * np.eye(12), b.T @ b / 40 + 0.1 * np.eye(12)
    g, q = ot_log_scales(st, si)
    t_map = (q * np.exp(g)) @ q.T
    np.testing.assert_allclose(t_map, t_map.T, atol=1e-12)
    assert np.all(np.exp(g) > 0)
    np.testing.assert_allclose(t_map @ st @ t_map, si, atol=1e-10)


def test_unbounded_is_the_full_shrunk_match_and_zero_strength_is_the_shift():
    text, image = _pair(3000, 16, 1, ratio=np.linspace(0.4, 1.6, 16))
    mt, mi = _moments(text), _moments(image)
    full = fit_closed_form(mt, mi, bounded=False, shrinkage_rows=0.0)
    np.testing.assert_array_equal(full.h, full.g)
    st, si = mt.covariance(), mi.covariance()
    np.testing.assert_allclose(full.A @ st @ full.A, si, atol=1e-9)
    for zero in (fit_closed_form(mt, mi, strength=0.0), fit_closed_form(mt, mi, bound=0.0, adaptive=False)):
        assert np.array_equal(zero.A, np.eye(16)) and not zero.h.any()


def test_correction_is_bounded_signed_and_never_beyond_the_full_match():
    for n, d in ((300, 64), (5000, 64), (200, 128)):
        text, image = _pair(n, d, n + d, ratio=np.linspace(0.3, 2.0, d))
        mt, mi = _moments(text), _moments(image)
        cf = fit_closed_form(mt, mi, bound=0.3)
        tau = noise_spread(n, n, d)
        assert np.all(np.abs(cf.h) <= np.maximum(0.3, np.abs(cf.g) - tau) + 1e-12)
        assert np.all(np.abs(cf.h) <= np.abs(cf.g) + 1e-12)
        assert np.all(cf.h * cf.g >= 0)
        np.testing.assert_allclose(cf.A, cf.A.T, atol=0)


def test_correction_grows_with_evidence():
    ratio = np.r_[np.full(4, 2.5), np.ones(60)]  # a strong, low-rank mismatch
    shares = []
    for n in (100, 1000, 20000):
        text, image = _pair(n, 64, 7, ratio=ratio)
        cf = fit_closed_form(_moments(text), _moments(image))
        strongest = np.argsort(-np.abs(cf.g))[:4]
        shares.append((cf.gain, float(np.abs(cf.h[strongest]).mean()),
                       float(np.abs(cf.h[strongest]).mean() / np.abs(cf.g[strongest]).mean())))
    gains, applied, corrected = zip(*shares)
    assert gains[0] < gains[1] < gains[2] and gains[2] > 0.95
    assert applied[0] < applied[1] < applied[2]
    # well sampled: the cap lifts (far beyond bound=0.3) and the planted mismatch is nearly all corrected
    assert corrected[2] > 0.8 and np.abs(cf.h).max() > 0.5


def test_pure_noise_is_only_nudged():
    """Same distribution on both sides at N ≈ d: every correction stays within the bound."""
    text, image = _pair(400, 128, 11)
    cf = fit_closed_form(_moments(text), _moments(image), bound=0.3)
    assert np.abs(cf.h).max() <= 0.3 and np.abs(cf.h).mean() < 0.15


def test_constant_modality_is_a_clear_error():
    text, image = _pair(50, 8, 2)
    with pytest.raises(InputError, match="no variance"):
        fit_closed_form(_moments(text), _moments(np.repeat(image[:1], 50, axis=0)))
    with pytest.raises(InputError, match="≥ 0"):
        fit_closed_form(_moments(text), _moments(image), bound=-1.0)


def test_with_strength_interpolates_the_log_scales():
    text, image = _pair(2000, 16, 3, ratio=np.linspace(0.5, 1.5, 16))
    cf = fit_closed_form(_moments(text), _moments(image))
    np.testing.assert_allclose(cf.with_strength(1.0).A, cf.A, atol=1e-12)
    assert np.array_equal(cf.with_strength(0.0).A, np.eye(16))
    half = cf.with_strength(0.5, 2.0)
    np.testing.assert_allclose(half.A, 2.0 * (cf.q * np.exp(0.5 * cf.h)) @ cf.q.T, atol=1e-12)
    assert (half.alpha, half.scale) == (0.5, 2.0)
    loaded = type(cf).from_arrays(half.to_arrays())
    assert (loaded.alpha, loaded.scale) == (0.5, 2.0) and np.array_equal(loaded.A, half.A)


@pytest.mark.parametrize("spread", [0.3, 1.0, 3.0])
def test_radial_scale_keeps_the_centroid_length(spread):
    rng = np.random.default_rng(5)
    image = l2_normalize(np.r_[2.0, np.zeros(31)] + rng.normal(size=(500, 32)))
    mu_i = image.mean(0)
    dev = rng.normal(size=(500, 32)) * spread / np.sqrt(32)
    s = radial_scale(dev, mu_i)
    y = l2_normalize(mu_i + s * dev)
    assert abs(y.mean(0) @ mu_i / np.linalg.norm(mu_i) - np.linalg.norm(mu_i)) < 1e-9
    # larger deviations need a smaller scale
    assert radial_scale(2 * dev, mu_i) == pytest.approx(s / 2, rel=1e-6)


def _noise_amplifying_pair(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Text with 8 semantic axes and tiny noise elsewhere; the image adds a strong residual on 3
    axes that are pure noise for the text (the planted gap): matching it amplifies the noise."""
    rng = np.random.default_rng(seed)
    d = 32
    sem = rng.normal(size=(n, 8)) * 0.4
    text = np.zeros((n, d))
    text[:, 0] = 1.0
    text[:, 2:10] = sem
    image = text.copy()
    image[:, 0], image[:, 1] = 0.0, 1.0
    text += rng.normal(scale=0.02, size=(n, d))
    image[:, 10:13] += rng.normal(scale=0.35, size=(n, 3))
    image += rng.normal(scale=0.02, size=(n, d))
    return l2_normalize(text), l2_normalize(image)


def test_knn_budget_stops_the_noise_amplifying_over_correction():
    text, image = _noise_amplifying_pair(20000, 4)
    mt, mi = _moments(text), _moments(image)
    cf = fit_closed_form(mt, mi)
    assert cf.gain > 0.95 and np.abs(cf.h).max() > 1.5  # well sampled: the caps lift
    mu_t, mu_i = np.asarray(mt.mean), np.asarray(mi.mean)
    held = slice(0, 1000)

    def knn_of(m):
        y = l2_normalize(mu_i + (text[held] - mu_t) @ m.A.T)
        return knn_overlap(text[held], y)

    budgets = [fit_budget(cf, text[5000:], mu_t, mu_i, budget=b, seed=1) for b in (0.0, 0.01, 0.05, 1.0)]
    alphas = [m.alpha for m in budgets]
    assert alphas == sorted(alphas) and alphas[-1] == 1.0 and alphas[1] < 1.0
    shift_knn, full_knn, kept = knn_of(cf.with_strength(0.0)), knn_of(cf), knn_of(budgets[1])
    assert full_knn < shift_knn - 0.2  # the unbudgeted correction collapses the neighbourhoods
    assert kept >= shift_knn - 0.03  # out of sample, the budget holds them


@pytest.mark.parametrize("radial", [True, False])
def test_knn_budget_is_measured_against_the_plain_shift_after_calibration(radial):
    """The budget's promise, on the rows it is measured on: the substitutes as applied (radially
    scaled, centroid-calibrated) keep the kNN overlap within ``budget`` of the plain centroid
    shift's, not of a radially scaled or uncalibrated stand-in for it."""
    text, image = _noise_amplifying_pair(1500, 5)
    mt, mi = _moments(text), _moments(image)
    mu_t, mu_i = np.asarray(mt.mean), np.asarray(mi.mean)
    cf = fit_closed_form(mt, mi)
    budget = 0.01
    m = fit_budget(cf, text, mu_t, mu_i, budget=budget, rows=2000, radial=radial)  # every row is measured
    y = mu_i + (text - mu_t) @ m.A.T
    subs = l2_normalize(y + centroid_offset(y, mu_i)[0])
    shift = l2_normalize(text - mu_t + mu_i)
    assert np.linalg.norm(subs.mean(0) - mu_i) < 1e-6
    assert knn_overlap(text, subs) >= knn_overlap(text, shift) - budget - 1e-9
    assert m.scale == 1.0 or radial


@pytest.mark.realdata
def test_coco_out_of_sample_beats_the_shift_and_calibrates(coco500):
    text, image = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in coco500)
    test = np.random.default_rng(0).permutation(text.shape[0])[:100]
    train = np.setdiff1d(np.arange(text.shape[0]), test)
    aniso = AnisoAlign(match_rows=0).fit(text[train], image[train])
    shift = CentroidShift().fit(text[train], image[train])
    subs_a, subs_s = aniso.transform(text[test]), shift.transform(text[test])
    dom_a = domain_classifier_accuracy(subs_a, image[test], repeats=20)
    dom_s = domain_classifier_accuracy(subs_s, image[test], repeats=20)
    assert dom_a < dom_s - 0.03
    assert knn_overlap(text[test], subs_a) >= knn_overlap(text[test], subs_s) - 0.02
    assert centroid_residual(aniso.transform(text[train]), image[train]) <= 1e-3


@pytest.mark.realdata
def test_convirt_radial_scale_keeps_the_neighbourhoods_the_offset_compresses(convirt500):
    """ConVIRT's images are far more concentrated than its reports: calibrating with an offset
    alone compresses the substitutes unevenly; the radial scale keeps the shift's neighbourhoods.

    With a kNN budget (0.01) the substitutes stay within 0.015 of the shift's kNN overlap out of
    sample; the default (no budget since issue 23) pays more of it (0.89 against the shift's 0.91
    here), and the radial scale still keeps more of the neighbourhoods than the offset alone."""
    text, image = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in convirt500)
    test = np.random.default_rng(0).permutation(text.shape[0])[:100]
    train = np.setdiff1d(np.arange(text.shape[0]), test)
    knn = {}
    for label, params in (("budget", {"knn_budget": 0.01}), ("budget, offset only", {"knn_budget": 0.01, "radial": False}),
                          ("default", {}), ("default, offset only", {"radial": False})):
        model = AnisoAlign(**{"match_rows": 0, **params}).fit(text[train], image[train])
        assert centroid_residual(model.transform(text[train]), image[train]) <= 1e-3
        knn[label] = knn_overlap(text[test], model.transform(text[test]))
    shift = knn_overlap(text[test], CentroidShift().fit(text[train], image[train]).transform(text[test]))
    assert knn["budget"] >= shift - 0.015
    assert knn["budget"] > knn["budget, offset only"] + 0.005
    assert knn["default"] > knn["default, offset only"]
