"""Blockwise 2-D polar coordinates (docs/method.md §3) and their exact inverse (numpy).

``z`` (n, r) with r even is split into K = r/2 blocks ``(z_{2k}, z_{2k+1})`` (0-based):

    ρ_k = sqrt(z_{2k}² + z_{2k+1}² + ε),   θ_k = atan2(z_{2k+1}, z_{2k}),   ℓ_k = log ρ_k

and back with ``ρ̄_k = sqrt(max(ρ_k² − ε, 0))``. ε keeps ∂ρ/∂z and the atan2 gradient finite
at the origin; the inverse removes it again, so a round trip is exact to rounding.
"""

from __future__ import annotations

import numpy as np

from aniso.errors import InputError

__all__ = ["to_polar", "from_polar", "EPS64"]

EPS64 = 1e-8


def _check(z: np.ndarray) -> None:
    if z.ndim != 2 or z.shape[1] % 2:
        raise InputError(f"polar blocks need a 2-D array with an even number of columns, got {tuple(z.shape)}")


def to_polar(z: np.ndarray, eps: float = EPS64) -> tuple[np.ndarray, np.ndarray]:
    """``(θ, ℓ)``, each ``(n, K)``, of the blocks of ``z`` (float64 numpy)."""
    _check(z)
    z1, z2 = z[:, 0::2], z[:, 1::2]
    return np.arctan2(z2, z1), 0.5 * np.log(z1 * z1 + z2 * z2 + eps)


def from_polar(theta: np.ndarray, ell: np.ndarray, eps: float = EPS64) -> np.ndarray:
    """Inverse of :func:`to_polar`: ``(n, 2K)``."""
    rho = np.sqrt(np.maximum(np.exp(2 * ell) - eps, 0.0))
    z = np.empty((theta.shape[0], 2 * theta.shape[1]), dtype=np.result_type(theta, ell))
    z[:, 0::2] = rho * np.cos(theta)
    z[:, 1::2] = rho * np.sin(theta)
    return z
