from __future__ import annotations

import math

import numpy as np
import pytest

from aniso.methods import C3, Aligner, CentroidShift, Identity, MomentMatch, ReAlign, get_aligner
from aniso.numeric.arrays import l2_normalize
from aniso.numeric.rowwise import row_normals


def _ref_normalize(x):
    """The ReAlign reference's l2_normalize (embed_ReAlign.py): fp64, max-abs prescale, 1e-10 guard."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    m = np.max(np.abs(x), axis=1, keepdims=True)
    m[m == 0] = 1.0
    x = x / m
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n < 1e-10] = 1.0
    return x / n


def _realign_reference(text, image):
    """Direct transcription of ReAlign's published steps (passes 1-4; docs/method.md §7)."""
    t, i = _ref_normalize(text), _ref_normalize(image)
    mu_t = t.mean(0).astype(np.float32).astype(np.float64)  # the reference casts means to fp32
    mu_i = i.mean(0).astype(np.float32).astype(np.float64)
    tr_t = np.mean(np.sum((t - mu_t) ** 2, 1))
    tr_i = np.mean(np.sum((i - mu_i) ** 2, 1))
    s = np.sqrt(tr_i / (tr_t + 1e-10))
    xh = _ref_normalize((t - mu_t) * s + mu_i)
    mu_hat = xh.mean(0)
    return _ref_normalize(xh - mu_hat + mu_i).astype(np.float32)


@pytest.mark.realdata
def test_realign_matches_reference_on_coco(coco500):
    text, image = coco500
    ours = ReAlign().fit(text, image).transform(text)
    np.testing.assert_allclose(ours, _realign_reference(text, image), atol=1e-6)


def test_identity_centroid_c3_definitions(gap):
    t, i = gap.text.astype(np.float64), gap.image.astype(np.float64)
    mu_t, mu_i = t.mean(0), i.mean(0)
    norm = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(Identity().fit(t, i).transform(t), norm(t), atol=1e-6)
    np.testing.assert_allclose(CentroidShift().fit(t, i).transform(t), norm(t - mu_t + mu_i), atol=1e-6)
    np.testing.assert_allclose(C3(noise=0).fit(t, i).transform(t), norm(t - mu_t + mu_i), atol=1e-6)
    noisy = C3(noise=math.sqrt(0.016), seed=4).fit(t, i)
    out = noisy.transform(t)
    xi = row_normals(l2_normalize(t), seed=4) * math.sqrt(0.016)  # keyed on each unit row
    np.testing.assert_allclose(out, norm(t - mu_t + mu_i + xi), atol=1e-6)
    assert np.array_equal(out, noisy.transform(t))


def test_moment_match_definition_and_second_moments(gap):
    t, i = gap.text.astype(np.float64), gap.image.astype(np.float64)
    d = t.shape[1]
    st, si = np.cov(t.T, bias=True), np.cov(i.T, bias=True)
    lam = 1e-6 * (np.trace(st) + np.trace(si)) / d

    def power(c, p):
        w, v = np.linalg.eigh(c)
        return (v * np.clip(w, 0, None) ** p) @ v.T

    m = power(si, 0.5) @ power(st + lam * np.eye(d), -0.5)
    expected = i.mean(0) + (t - t.mean(0)) @ m.T
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    mm = MomentMatch().fit(t, i)
    np.testing.assert_allclose(mm.transform(t), expected, atol=1e-5)
    # before renormalisation the covariance is matched
    np.testing.assert_allclose(np.cov(((t - t.mean(0)) @ m.T).T, bias=True), si, atol=1e-4)
    assert not np.allclose(MomentMatch(shrinkage=0.9).fit(t, i).transform(t), mm.transform(t), atol=1e-3)


@pytest.mark.parametrize("name,params", [("identity", {}), ("centroid", {}), ("c3", {"noise": 0.1}),
                                         ("realign", {}), ("moment", {"shrinkage": 0.5}),
                                         ("anisoalign", {"r": 8, "p": 4})])
def test_save_load_bit_exact(tmp_path, gap, name, params):
    a = get_aligner(name, **params).fit(gap.text, gap.image)
    a.save(str(tmp_path / name))
    b = Aligner.load(str(tmp_path / name))
    assert type(b) is type(a) and b.get_params() == a.get_params()
    for key, value in a.get_state().items():
        assert np.array_equal(value, b.get_state()[key]), key
    assert np.array_equal(a.transform(gap.text[:300]), b.transform(gap.text[:300]))
