from __future__ import annotations

import numpy as np
import torch

from aniso.methods.anisoalign.prior import PhasePrior, fit_prior, wrap


def test_energy_is_periodic_and_drift_points_to_anchor():
    torch.manual_seed(0)
    p = PhasePrior(4, hidden=8)
    th, ell = torch.rand(16, 4) * 6 - 3, torch.randn(16, 4)
    e = p.energy(th, ell)
    assert torch.allclose(e, p.energy(th + 2 * np.pi, ell), atol=1e-4)
    assert torch.allclose(wrap(th + 2 * np.pi), th, atol=1e-5)


def test_fit_learns_concentrated_phases():
    rng = np.random.default_rng(0)
    theta = np.angle(np.exp(1j * (1.0 + 0.3 * rng.standard_normal((2000, 3)))))
    ell = rng.normal(size=(2000, 3))
    prior = fit_prior(theta, ell, steps=60, batch_size=256, hidden=16, seed=0)
    t = torch.full((1, 3), 0.0)
    v = prior.drift(t, torch.zeros(1, 3))
    assert torch.all(v > 0)  # from phase 0 the drift pulls towards the anchor at +1 rad
    np.testing.assert_allclose(prior.l_mean.numpy(), ell.mean(0), atol=1e-5)
    arrays = prior.to_arrays()
    clone = PhasePrior(3, hidden=16)
    clone.load_arrays(arrays)
    assert torch.equal(clone.energy(t, torch.zeros(1, 3)), prior.energy(t, torch.zeros(1, 3)))
