"""Row-deterministic products and per-row noise (aniso/numeric/rowwise.py)."""

from __future__ import annotations

import numpy as np
import pytest

from aniso.numeric.rowwise import TILE, row_normals, rowwise_matmul

#: Block boundaries: single rows, around the tile size, and sizes that are multiples of nothing.
CUTS = [(1,), (3, 7, 33), (TILE - 1,), (TILE,), (TILE + 1, 2 * TILE + 5), (117, 600)]


def _blocked(fn, x: np.ndarray, cuts: tuple[int, ...]) -> np.ndarray:
    edges = [0, *cuts, len(x)]
    return np.concatenate([fn(x[lo:hi]) for lo, hi in zip(edges[:-1], edges[1:])])


# Shapes to multiply: d×d maps (CLIP widths), and narrow and wide ones either side of the tiles.
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-4)])
@pytest.mark.parametrize("k,p", [(512, 512), (768, 768), (512, 16), (16, 512), (70, 256), (256, 40), (512, 0)])
def test_rows_do_not_depend_on_their_block(k, p, dtype, tol):
    rng = np.random.default_rng(k + p)
    x = rng.standard_normal((901, k))
    m = rng.standard_normal((p, k)).T  # a transposed view, as the aligners pass it
    whole = rowwise_matmul(x, m, dtype=dtype)
    assert whole.shape == (901, p) and whole.dtype == dtype
    np.testing.assert_allclose(whole, x @ m, rtol=tol, atol=tol)
    for cuts in CUTS:
        assert np.array_equal(_blocked(lambda b: rowwise_matmul(b, m, dtype=dtype), x, cuts), whole), cuts
    order = rng.permutation(len(x))
    assert np.array_equal(rowwise_matmul(x[order], m, dtype=dtype), whole[order])


def test_float32_input_is_promoted_and_empty_input_works():
    rng = np.random.default_rng(0)
    x, m = rng.standard_normal((5, 8)).astype(np.float32), rng.standard_normal((8, 3))
    out = rowwise_matmul(x, m)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, x.astype(np.float64) @ m, rtol=1e-12)
    assert rowwise_matmul(x[:0], m).shape == (0, 3)


@pytest.mark.parametrize("d", [512, 7, 1])
def test_row_normals_keyed_on_the_row(d):
    x = np.random.default_rng(d).standard_normal((3000, d))
    z = row_normals(x, seed=4)
    assert z.shape == x.shape and np.isfinite(z).all()
    for cuts in CUTS:  # a row's noise is the same in any block
        assert np.array_equal(_blocked(lambda b: row_normals(b, seed=4), x, cuts), z), cuts
    assert not np.array_equal(row_normals(x, seed=5), z)  # the seed matters
    twice = row_normals(np.concatenate([x[:10], x[:10]]), seed=4)
    assert np.array_equal(twice[:10], twice[10:])  # equal rows, equal noise


def test_row_normals_are_standard_normal_and_independent_across_rows():
    x = np.random.default_rng(0).standard_normal((20000, 64))
    z = row_normals(x, seed=1)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01
    # Tail mass of a standard normal: P(|z| > 2) = 0.0455.
    assert abs(np.mean(np.abs(z) > 2.0) - 0.0455) < 0.003
    # Rows differing in one bit get unrelated noise.
    y = x.copy()
    y.view(np.uint64)[:, 0] ^= np.uint64(1)
    assert abs(np.corrcoef(row_normals(y, seed=1).ravel(), z.ravel())[0, 1]) < 0.01
    # Neighbouring columns are uncorrelated (Box–Muller pairs split across halves).
    assert np.max(np.abs(np.corrcoef(z[:, :8].T) - np.eye(8))) < 0.05
