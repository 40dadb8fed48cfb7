from __future__ import annotations

import numpy as np

from aniso.methods.anisoalign.closed_form import fit_closed_form
from aniso.methods.anisoalign.frame import fit_frame
from aniso.methods.anisoalign.refine import Refiner, fit_refiner, input_statistics
from aniso.numeric.arrays import l2_normalize
from aniso.numeric.moments import Moments


def _refiner(gap, bounded=True):
    mt, mi = Moments.from_chunk(gap.text), Moments.from_chunk(gap.image)
    frame = fit_frame(mt, mi, r=8, p=4)
    cf = fit_closed_form(mt, mi)
    ref = Refiner(frame=frame, A=cf.A, l_mean=np.zeros(4), l_std=np.ones(4), sig_v=np.ones(4),
                  bounds=np.array([0.3, 0.2, 0.5]), bounded=bounded)
    return ref, cf, mt, mi


def test_no_mlp_is_closed_form_and_training_stays_bounded(gap):
    ref, cf, mt, mi = _refiner(gap)
    x = gap.text.astype(np.float64)
    direct = l2_normalize(cf.apply(x, mt.mean, mi.mean))
    assert np.array_equal(ref.apply(x), direct)
    input_statistics(ref, x, gap.image.astype(np.float64))
    fit_refiner(ref, None, x, gap.image.astype(np.float64), hidden=16, steps=10, batch_size=128)
    _, _, dth, dl, db = ref.corrections(x)
    assert np.abs(dth).max() <= 0.3 and np.abs(dl).max() <= 0.2 and np.all(np.abs(db) <= 0.5 * ref.sig_v)
    assert np.abs(dth).max() > 0
    np.testing.assert_allclose(np.linalg.norm(ref.apply(x), axis=1), 1, atol=1e-12)


def test_unbounded_ablation_scales_linearly(gap):
    ref, *_ = _refiner(gap, bounded=False)
    u = np.array([[3.0, -4.0]])
    assert np.array_equal(ref._bound(u, 0.5), 0.5 * u)
    ref.bounded = True
    assert np.abs(ref._bound(u, 0.5)).max() < 0.5
