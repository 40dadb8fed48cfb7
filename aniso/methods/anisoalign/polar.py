"""Blockwise 2-D polar coordinates (docs/method.md §3) and their exact inverse, numpy and torch.

``z`` (n, r) with r even is split into K = r/2 blocks ``(z_{2k}, z_{2k+1})`` (0-based):

    ρ_k = sqrt(z_{2k}² + z_{2k+1}² + ε),   θ_k = atan2(z_{2k+1}, z_{2k}),   ℓ_k = log ρ_k

and back with ``ρ̄_k = sqrt(max(ρ_k² − ε, 0))``. ε keeps ∂ρ/∂z and the atan2 gradient finite
at the origin; the inverse removes it again, so a round trip is exact to rounding.

:func:`rotate_scale` applies a phase shift and log-radius shift *in Cartesian form*
(``z'_k = e^{Δℓ_k} Rot(Δθ_k) z_k``): mathematically the same as going to polar, adding, and coming
back, but with zero shifts it returns ``z`` bit for bit, which is what makes the zero-MLP map
equal to the closed-form map exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from aniso.errors import InputError

if TYPE_CHECKING:  # torch loads only when a torch function runs (training), never for inference
    import torch

__all__ = ["to_polar", "from_polar", "to_polar_torch", "from_polar_torch", "rotate_scale_torch", "EPS64", "EPS32"]

EPS64 = 1e-8
EPS32 = 1e-6


def _check(z: np.ndarray | torch.Tensor) -> None:
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


def to_polar_torch(z: torch.Tensor, eps: float = EPS32) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch version of :func:`to_polar` (differentiable; kept in the input's float dtype)."""
    import torch

    _check(z)
    z1, z2 = z[:, 0::2], z[:, 1::2]
    return torch.atan2(z2, z1), 0.5 * torch.log(z1 * z1 + z2 * z2 + eps)


def from_polar_torch(theta: torch.Tensor, ell: torch.Tensor, eps: float = EPS32) -> torch.Tensor:
    """Torch version of :func:`from_polar`."""
    import torch

    rho = torch.sqrt(torch.clamp(torch.exp(2 * ell) - eps, min=0.0))
    return torch.stack([rho * torch.cos(theta), rho * torch.sin(theta)], dim=-1).flatten(1)


def rotate_scale_torch(z: torch.Tensor, dtheta: torch.Tensor, dell: torch.Tensor) -> torch.Tensor:
    """Blocks of ``z`` rotated by ``dtheta`` and scaled by ``exp(dell)`` (each ``(n, K)``)."""
    import torch

    z1, z2 = z[:, 0::2], z[:, 1::2]
    c, s, g = torch.cos(dtheta), torch.sin(dtheta), torch.exp(dell)
    return torch.stack([g * (c * z1 - s * z2), g * (s * z1 + c * z2)], dim=-1).flatten(1)
