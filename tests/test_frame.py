from __future__ import annotations

import numpy as np
import pytest

from aniso.errors import InputError
from aniso.methods.anisoalign.frame import energy_rank, fit_frame, haar_orthogonal
from aniso.numeric.moments import Moments


def _moments(gap):
    return Moments.from_chunk(gap.text), Moments.from_chunk(gap.image)


def test_frame_eigen_structure(gap):
    mt, mi = _moments(gap)
    f = fit_frame(mt, mi, r=16, p=8, seed=3)
    sigma = mt.covariance() + mi.covariance()
    lam = 1e-6 * np.trace(sigma) / sigma.shape[0]
    assert f.lam == pytest.approx(lam)
    np.testing.assert_allclose(f.U.T @ f.U, np.eye(16), atol=1e-12)
    np.testing.assert_allclose(f.U.T @ f.P, 0, atol=1e-12)
    # U spans the top-r eigenvectors of Σ + λI
    np.testing.assert_allclose(sigma @ f.U + lam * f.U, f.U * f.eigenvalues[:16], atol=1e-10)
    x = gap.text.astype(np.float64)
    a, b = f.split(x, f.mu_text)
    np.testing.assert_allclose(f.mu_text + a @ f.U.T + b, x, atol=1e-12)
    np.testing.assert_allclose(b @ f.U, 0, atol=1e-12)
    np.testing.assert_allclose(f.unmix(f.mix(a)), a, atol=1e-12)


def test_haar_is_orthogonal_seeded_and_identity_option(gap):
    r = haar_orthogonal(32, 5)
    np.testing.assert_allclose(r @ r.T, np.eye(32), atol=1e-12)
    assert np.array_equal(r, haar_orthogonal(32, 5)) and not np.allclose(r, haar_orthogonal(32, 6))
    mt, mi = _moments(gap)
    assert np.array_equal(fit_frame(mt, mi, r=8, mixing="identity").R, np.eye(8))


def test_energy_rule_and_bad_rank(gap):
    w = np.r_[np.full(10, 10.0), np.full(90, 0.1)]
    assert energy_rank(w, 0.8, lo=2, hi=50) == 10
    assert energy_rank(w, 0.8, lo=32, hi=50) == 32
    mt, mi = _moments(gap)
    assert fit_frame(mt, mi, r=None).r % 2 == 0
    with pytest.raises(InputError):
        fit_frame(mt, mi, r=7)
    with pytest.raises(InputError):
        fit_frame(mt, mi, r=8, mixing="random")
