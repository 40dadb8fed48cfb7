"""The fused float32 kernel of the normalised affine baselines against their float64 maps."""

from __future__ import annotations

import numpy as np
import pytest

from aniso.errors import InputError
from aniso.methods import get_aligner
from aniso.numeric.fused_affine import BLOCK, NormalizedAffine

#: The methods whose map is affine (C3 without its noise), with the parameters that make it so.
AFFINE = {"realign": {}, "centroid": {}, "c3": {"noise": 0.0}, "identity": {}}


@pytest.fixture(scope="module")
def cone() -> tuple[np.ndarray, np.ndarray]:
    """Raw (non-normalised) text and image rows in two narrow cones, d=512, not a block multiple."""
    rng = np.random.default_rng(7)
    d, n = 512, 3 * BLOCK + 77
    text = (rng.normal(size=(n, d)) * 0.2 + rng.normal(size=d)) * 8.0
    image = rng.normal(size=(n + 5, d)) * 0.25 + rng.normal(size=d)
    return text.astype(np.float32), image.astype(np.float32)


@pytest.mark.parametrize("calibrate", [False, True])
@pytest.mark.parametrize("name", AFFINE)
def test_fused_transform_equals_the_float64_map(cone, name, calibrate):
    text, image = cone
    aligner = get_aligner(name, calibrate=calibrate, **AFFINE[name]).fit(text, image)
    fused = aligner.transform(text)  # float32 input: the fused kernel
    exact = aligner.transform(text.astype(np.float64))  # float64 input: the float64 map
    assert fused.dtype == np.float32 and fused.shape == text.shape
    np.testing.assert_allclose(fused, exact, rtol=0, atol=3e-7)
    np.testing.assert_allclose(aligner.transform(text.astype(np.float16)),
                               aligner.transform(text.astype(np.float16).astype(np.float64)), rtol=0, atol=3e-7)


@pytest.mark.parametrize("name", AFFINE)
def test_fused_calibration_sum_equals_the_float64_sum(cone, name):
    text, image = cone
    aligner = get_aligner(name, **AFFINE[name]).fit(text, image)
    total, n = aligner.premap_sum(text)
    exact, n64 = aligner.premap_sum(text.astype(np.float64))
    assert n == n64 == text.shape[0]
    assert np.abs(total - exact).max() / np.abs(exact).max() <= 1e-6


def test_fused_kernel_rows_are_independent_of_their_block(cone):
    text, image = cone
    aligner = get_aligner("realign").fit(text, image)
    whole = aligner.transform(text)
    for cut in (1, BLOCK - 1, BLOCK + 1, 2 * BLOCK + 13):
        parts = np.concatenate([aligner.transform(text[:cut]), aligner.transform(text[cut:])])
        assert np.array_equal(parts, whole), cut


def test_rows_whose_float32_norm_overflows_are_mapped_like_the_others(cone):
    """Finite entries above ~1e19 overflow the float32 squared norm; normalisation is
    scale-free, so such a row maps exactly like the same row at a normal scale."""
    text, image = cone
    aligner = get_aligner("realign").fit(text, image)
    rows = text[:5].copy()
    rows[2] *= np.float32(1e18)  # max entry ~1e19: ‖x‖² overflows float32
    assert not np.isfinite(np.einsum("ij,ij->i", rows, rows)[2])
    got = aligner.transform(rows)
    np.testing.assert_allclose(got, aligner.transform(text[:5]), rtol=0, atol=3e-7)


def test_nan_row_is_named_and_zero_rows_stay_finite(cone):
    text, image = cone
    aligner = get_aligner("realign").fit(text, image)
    bad = text[: BLOCK + 10].copy()
    bad[BLOCK + 3, 5] = np.nan
    with pytest.raises(InputError, match=f"first bad row is {BLOCK + 3}"):
        aligner.transform(bad)
    with pytest.raises(InputError, match=f"first bad row is {BLOCK + 3}"):
        aligner.premap_sum(bad)
    zero = np.zeros((2, text.shape[1]), np.float32)  # left unscaled, as l2_normalize does
    np.testing.assert_allclose(aligner.transform(zero), aligner.transform(zero.astype(np.float64)), atol=3e-7)


def test_kernel_formula_on_a_hand_made_case():
    """x* = normalize(normalize(s·u + c) − m), checked against the formula written out."""
    x = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]], np.float32)
    s, c, m = 0.5, np.array([0.1, -0.2, 0.3]), np.array([0.05, 0.0, -0.1])
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = s * u + c
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    z = y - m
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(NormalizedAffine(s, c, m).transform(x), z, atol=3e-7)
    np.testing.assert_allclose(NormalizedAffine(s, c).transform(x), y, atol=3e-7)
    total, n = NormalizedAffine(s, c).premap_sum(x)
    np.testing.assert_allclose(total, y.sum(axis=0), atol=1e-6)
    assert n == 2


@pytest.mark.parametrize("params", [{}, {"bounded": False}])
def test_a_matrix_map_applies_with_the_kernel_its_model_records(cone, params):
    """A new model's closed form applies with the fused float32 kernel (products on fixed tiles,
    chunk-invariant: test_aligner_contract.py), to float32 rounding of the float64 map; a model
    with the ``float64-rows`` kernel keeps the float64 map (so does the moment match, always)."""
    text, image = cone
    assert get_aligner("moment").fit(text, image)._fused(text, calibrated=False) is None
    aligner = get_aligner("anisoalign", **params).fit(text, image)
    assert aligner.apply_kernel == "float32-tiles"
    assert aligner._fused(text, calibrated=aligner.calibrate) is not None
    new = aligner.transform(text)
    aligner.apply_kernel = "float64-rows"
    assert aligner._fused(text, calibrated=aligner.calibrate) is None
    old = aligner.transform(text)
    assert not np.array_equal(new, old)  # two kernels: the record matters
    np.testing.assert_allclose(new, old, rtol=0, atol=2e-6)


def test_closed_form_calibration_sum_uses_the_matrix_kernel(cone):
    """AnisoAlign's closed form is normalize(A u + c): its calibration sums go through the fused
    kernel (float32 matrix product) and agree with the float64 map."""
    text, image = cone
    aligner = get_aligner("anisoalign").fit(text, image)
    assert aligner._fused(text, calibrated=False, rowwise=False) is not None
    total, n = aligner.premap_sum(text)
    exact = aligner.premap(text).sum(axis=0)
    assert n == text.shape[0]
    assert np.abs(total - exact).max() / np.abs(exact).max() <= 1e-5
    kernel = NormalizedAffine(aligner.closed_form.A, aligner.mu_image - aligner.closed_form.A @ aligner.mu_text)
    np.testing.assert_allclose(kernel.transform(text), aligner.premap(text), rtol=0, atol=2e-6)
