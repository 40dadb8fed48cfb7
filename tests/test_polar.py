from __future__ import annotations

import numpy as np
import pytest
import torch

from aniso.errors import InputError
from aniso.methods.anisoalign.polar import from_polar, from_polar_torch, rotate_scale_torch, to_polar, to_polar_torch


def test_round_trip_numpy_and_torch():
    z = np.random.default_rng(0).normal(size=(200, 16)) * np.logspace(0, -3, 16)
    th, ell = to_polar(z)
    assert th.shape == (200, 8) and np.all(np.abs(th) <= np.pi)
    np.testing.assert_allclose(from_polar(th, ell), z, atol=1e-12)
    zt = torch.as_tensor(z)
    th_t, l_t = to_polar_torch(zt, eps=1e-8)
    np.testing.assert_allclose(from_polar_torch(th_t, l_t, eps=1e-8).numpy(), z, atol=1e-12)
    np.testing.assert_allclose(th_t.numpy(), th, atol=1e-12)


def test_rotate_scale_matches_polar_shift_and_is_exact_at_zero():
    rng = np.random.default_rng(1)
    z = torch.as_tensor(rng.normal(size=(50, 8)))
    dth, dl = torch.as_tensor(rng.normal(size=(50, 4)) * 0.3), torch.as_tensor(rng.normal(size=(50, 4)) * 0.2)
    th, ell = to_polar_torch(z, eps=0.0)
    expected = from_polar_torch(th + dth, ell + dl, eps=0.0)
    np.testing.assert_allclose(rotate_scale_torch(z, dth, dl).numpy(), expected.numpy(), atol=1e-12)
    zero = torch.zeros(50, 4, dtype=z.dtype)
    assert torch.equal(rotate_scale_torch(z, zero, zero), z)


def test_odd_width_rejected():
    with pytest.raises(InputError):
        to_polar(np.zeros((3, 5)))
