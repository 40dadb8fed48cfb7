"""Exact cosine k-nearest neighbours with deterministic tie-breaking.

Used by the diagnostics (kNN overlap, precision/recall, the domain classifier) and by AnisoAlign's
kNN budget and kNN floor, so all of them measure neighbourhoods the same way.
"""

from __future__ import annotations

import numpy as np

__all__ = ["knn_indices", "neighbour_overlap"]


def knn_indices(query: np.ndarray, base: np.ndarray, k: int, *, exclude_self: bool) -> np.ndarray:
    """Indices of the ``k`` nearest rows of ``base`` (cosine) for each row of ``query``.

    Ties are broken by index, exactly as a stable full sort would, so results are deterministic;
    the selection itself uses ``argpartition`` (O(n) per row instead of a full sort).
    """
    sim = query @ base.T
    if exclude_self:
        np.fill_diagonal(sim, -np.inf)
    k = min(k, base.shape[0] - (1 if exclude_self else 0))
    neg = -sim
    if k >= neg.shape[1]:
        return np.argsort(neg, axis=1, kind="stable")[:, :k]
    picked = np.sort(np.argpartition(neg, k - 1, axis=1)[:, :k], axis=1)  # by index: stable ties
    values = np.take_along_axis(neg, picked, axis=1)
    out = np.take_along_axis(picked, np.argsort(values, axis=1, kind="stable"), axis=1)
    # Rows with more entries equal to the k-th value than were picked: argpartition chose among
    # ties arbitrarily, so redo just those rows with the stable sort.
    kth = values.max(axis=1, keepdims=True)
    tied = (neg == kth).sum(axis=1) > (values == kth).sum(axis=1)
    if tied.any():
        out[tied] = np.argsort(neg[tied], axis=1, kind="stable")[:, :k]
    return out


def neighbour_overlap(reference: np.ndarray, rows: np.ndarray) -> float:
    """Mean share of each row's ``k`` nearest neighbours within ``rows`` that are among its
    reference neighbours ``reference`` (``(n, k)`` indices, e.g. :func:`knn_indices` of the source
    rows within themselves, self excluded): the kNN overlap@k. Pass the reference in once when
    several candidate sets are compared against the same rows."""
    k = reference.shape[1]
    found = knn_indices(rows, rows, k, exclude_self=True)
    # neighbours of a row are distinct: the row's hits are its equal (reference, found) pairs
    hits = (reference[:, :, None] == found[:, None, :]).sum(axis=(1, 2))
    return float(np.mean(hits) / k)
