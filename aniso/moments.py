"""Mergeable streaming moments ``(n, mean, M2)`` in float64 (Chan et al. merge).

``M2 = Σ (x − mean)(x − mean)ᵀ``. Per-chunk moments are computed two-pass within the chunk
(centre first, then the Gram product), so no precision is lost to the large common mean of
CLIP's cone; chunks are then merged exactly with::

    n = na + nb;  δ = μb − μa;  μ = μa + δ·nb/n;  M2 = M2a + M2b + δδᵀ·na·nb/n

The merge is associative, so moments computed per shard on Dask workers can be tree-reduced
in any order and agree with numpy's covariance to rounding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import reduce

import numpy as np

from .arrays import ArrayLike2D, iter_chunks, l2_normalize
from .errors import InputError

__all__ = ["Moments", "moments_of", "merge_all"]


@dataclass(frozen=True)
class Moments:
    """Count, mean and co-moment of a set of row vectors (float64).

    Attributes
    ----------
    n
        Number of rows.
    mean
        ``(d,)`` mean.
    m2
        ``(d, d)`` sum of centred outer products (``n × population covariance``).
    """

    n: int
    mean: np.ndarray
    m2: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def empty(cls, dim: int) -> Moments:
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    @classmethod
    def from_chunk(cls, x: np.ndarray, *, normalize: bool = True) -> Moments:
        """Moments of one ``(n, d)`` block (upcast to float64, L2-normalised by default)."""
        x64 = l2_normalize(x) if normalize else np.asarray(x, dtype=np.float64)
        n = x64.shape[0]
        if n == 0:
            return cls.empty(x64.shape[1])
        mean = x64.mean(axis=0)
        if x64 is x:  # never centre the caller's array in place
            x64 = x64.copy()
        x64 -= mean
        return cls(n, mean, x64.T @ x64)

    def merge(self, other: Moments) -> Moments:
        """Chan et al. pairwise merge; exact and associative up to rounding."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        if other.dim != self.dim:
            raise InputError(f"cannot merge moments of dimension {self.dim} and {other.dim}")
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        return Moments(n, mean, m2)

    def __add__(self, other: Moments) -> Moments:
        return self.merge(other)

    def covariance(self, ddof: int = 0) -> np.ndarray:
        """``M2 / (n − ddof)``; population covariance by default (as the method spec uses)."""
        if self.n - ddof <= 0:
            raise InputError(f"covariance needs more than {ddof} rows, got {self.n}")
        return self.m2 / (self.n - ddof)

    def trace(self) -> float:
        """Mean squared distance to the mean, ``tr(Σ)`` = ``E‖x − μ‖²``."""
        return float(np.trace(self.m2) / max(self.n, 1))

    # -- serialisation (small: d² floats) -------------------------------------------------
    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}n": np.asarray(self.n), f"{prefix}mean": self.mean, f"{prefix}m2": self.m2}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> Moments:
        return cls(int(arrays[f"{prefix}n"]), np.asarray(arrays[f"{prefix}mean"]), np.asarray(arrays[f"{prefix}m2"]))


def merge_all(parts: Iterable[Moments]) -> Moments:
    """Merge many partial moments (pairwise tree, which keeps rounding error balanced)."""
    items = list(parts)
    if not items:
        raise InputError("no moments to merge: the input is empty")
    while len(items) > 1:
        items = [reduce(Moments.merge, items[i : i + 2]) for i in range(0, len(items), 2)]
    return items[0]


def moments_of(source: ArrayLike2D, *, what: str = "input", normalize: bool = True) -> Moments:
    """Streaming moments of every row of ``source`` (an array or a re-iterable of blocks)."""
    parts = [Moments.from_chunk(c, normalize=normalize) for c in iter_chunks(source, what=what)]
    if not parts or sum(p.n for p in parts) == 0:
        raise InputError(f"{what}: no rows (the input is empty)")
    return merge_all(parts)
