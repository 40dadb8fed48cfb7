from __future__ import annotations

import numpy as np
import pytest

from aniso.errors import InputError
from aniso.methods.anisoalign.polar import from_polar, to_polar


def test_round_trip():
    z = np.random.default_rng(0).normal(size=(200, 16)) * np.logspace(0, -3, 16)
    th, ell = to_polar(z)
    assert th.shape == (200, 8) and np.all(np.abs(th) <= np.pi)
    np.testing.assert_allclose(from_polar(th, ell), z, atol=1e-12)
    np.testing.assert_allclose(th, np.arctan2(z[:, 1::2], z[:, 0::2]), atol=0)


def test_odd_width_rejected():
    with pytest.raises(InputError):
        to_polar(np.zeros((3, 5)))
