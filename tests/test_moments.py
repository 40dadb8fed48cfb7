"""Mergeable float64 moments: exact against numpy, order-free, distributed on Dask."""

from __future__ import annotations

import numpy as np
import pytest

from aniso.errors import InputError
from aniso.numeric.arrays import l2_normalize
from aniso.numeric.moments import Moments, merge_all, moments_of


def _reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x64 = l2_normalize(x)
    return x64.mean(0), np.cov(x64, rowvar=False, bias=True)


def test_chunked_moments_equal_numpy(gap):
    x = gap.text
    merged = merge_all(Moments.from_chunk(c) for c in np.array_split(x, 7))
    mean, cov = _reference(x)
    assert merged.n == x.shape[0]
    np.testing.assert_allclose(merged.mean, mean, atol=1e-12)
    np.testing.assert_allclose(merged.covariance(), cov, atol=1e-10, rtol=0)


def test_merge_is_order_free(gap):
    parts = [Moments.from_chunk(c) for c in np.array_split(gap.image, 5)]
    forward = merge_all(parts)
    backward = merge_all(parts[::-1])
    np.testing.assert_allclose(forward.m2, backward.m2, atol=1e-10)


def test_fp16_input_is_upcast(gap):
    x16 = (gap.text * 30).astype(np.float16)  # raw, non-normalised fp16 as encoders store them
    m = moments_of([x16[:700], x16[700:]])
    mean, cov = _reference(x16.astype(np.float64))
    np.testing.assert_allclose(m.covariance(), cov, atol=1e-10)
    np.testing.assert_allclose(m.mean, mean, atol=1e-12)


def test_dask_tree_reduction_equals_numpy(dask_client, gap):
    blocks = np.array_split(gap.text, 16)
    futures = [dask_client.submit(Moments.from_chunk, b, pure=False) for b in blocks]
    while len(futures) > 1:  # a real tree on the workers, fan-in 4
        futures = [dask_client.submit(merge_all, futures[i : i + 4], pure=False) for i in range(0, len(futures), 4)]
    result = futures[0].result()
    mean, cov = _reference(gap.text)
    np.testing.assert_allclose(result.covariance(), cov, atol=1e-10, rtol=0)
    np.testing.assert_allclose(result.mean, mean, atol=1e-12)


def test_empty_and_mismatched_inputs_raise():
    with pytest.raises(InputError, match="empty"):
        moments_of([np.empty((0, 4))])
    with pytest.raises(InputError, match="dimension"):
        Moments.from_chunk(np.ones((3, 4))).merge(Moments.from_chunk(np.ones((3, 5))))


def test_nan_row_is_named():
    x = np.ones((10, 4))
    x[7, 2] = np.nan
    with pytest.raises(InputError, match="first bad row is 7"):
        moments_of(x, what="text")


# -- statistics a method declares, float32 products ---------------------------------------------
def test_trace_only_moments_match_the_full_ones(gap):
    chunks = np.array_split(gap.image, 6)
    full = merge_all(Moments.from_chunk(c) for c in chunks)
    for products in ("float64", "float32"):
        trace = merge_all(Moments.from_chunk(c, full=False, products=products) for c in chunks)
        assert trace.m2 is None and not trace.full and trace.n == full.n
        np.testing.assert_allclose(trace.trace(), np.trace(full.covariance()), rtol=1e-7)
        np.testing.assert_allclose(trace.mean, full.mean, atol=1e-9)
    with pytest.raises(InputError, match="only the trace"):
        trace.covariance()
    mixed = full.merge(Moments.from_chunk(chunks[0], full=False))
    assert mixed.m2 is None and mixed.n == full.n + chunks[0].shape[0]


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("rows", [1, 4095, 4097, 10_000])
def test_float32_products_stay_within_1e6_of_float64(dtype, rows):
    """Float32 Gram blocks with float64 accumulation: ≤ 1e-6 relative error against all-float64
    (measured ≈ 4e-8 at d=512), for a narrow cone like CLIP's and at awkward row counts."""
    rng = np.random.default_rng(rows)
    d = 256
    x = (rng.normal(size=(rows, d)) * 0.3 + rng.normal(size=d)).astype(dtype)
    ref = merge_all(Moments.from_chunk(c) for c in np.array_split(x, 3) if len(c))
    got = merge_all(Moments.from_chunk(c, products="float32") for c in np.array_split(x, 3) if len(c))
    assert got.n == ref.n
    np.testing.assert_allclose(got.mean, ref.mean, rtol=0, atol=1e-7)
    if rows > 1:
        assert np.linalg.norm(got.m2 - ref.m2) / np.linalg.norm(ref.m2) <= 1e-6
        assert abs(got.ss - ref.ss) / ref.ss <= 1e-6


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("rows", [1, 1023, 1025, 10_000])
def test_float32_trace_moments_stay_within_1e6_of_float64(dtype, rows):
    """The trace statistics from Σu and Σ‖u‖² (no normalised copy) against all-float64."""
    rng = np.random.default_rng(rows)
    d = 512
    x = (rng.normal(size=(rows, d)) * 0.3 + rng.normal(size=d)).astype(dtype)
    ref = merge_all(Moments.from_chunk(c, full=False) for c in np.array_split(x, 3) if len(c))
    got = merge_all(Moments.from_chunk(c, full=False, products="float32") for c in np.array_split(x, 3) if len(c))
    assert got.n == ref.n and got.m2 is None
    np.testing.assert_allclose(got.mean, ref.mean, rtol=0, atol=1e-7)
    if rows > 1:
        assert abs(got.ss - ref.ss) / ref.ss <= 1e-6


def test_moments_round_trip_through_arrays(gap):
    for full in (True, False):
        m = Moments.from_chunk(gap.text, full=full, products="float32")
        back = Moments.from_arrays(m.to_arrays("x_"), "x_")
        assert back.n == m.n and back.ss == m.ss and (back.m2 is None) == (not full)
        np.testing.assert_array_equal(back.mean, m.mean)
