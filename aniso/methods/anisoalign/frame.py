"""The joint frame (docs/method.md §2): Σ = Σ_t + Σ_i + λI, dominant U, complement, R.

Each modality is centred on its own mean before the covariances are summed, so Σ holds the shared
semantic variation rather than the gap direction. The complement ``V`` is never formed: its
coordinates are taken as ``c − U Uᵀ c`` (a ``(n, d)`` vector with ``‖·‖ = ‖Vᵀc‖``). The next ``p``
eigenvectors after ``U`` (``P``, leading complement directions) are kept for the bounded
complement correction of Stage II.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from aniso.errors import InputError
from aniso.numeric.moments import Moments

__all__ = ["Frame", "fit_frame", "haar_orthogonal", "energy_rank"]

logger = logging.getLogger(__name__)


def haar_orthogonal(r: int, seed: int) -> np.ndarray:
    """A Haar-random ``(r, r)`` orthogonal matrix from ``seed`` (QR, sign-fixed so diag(R_qr) > 0)."""
    rng = np.random.default_rng(seed)
    q, rr = np.linalg.qr(rng.standard_normal((r, r)))
    # Without the sign fix QR's output is not Haar-distributed (and depends on LAPACK's choice).
    return q * np.where(np.diag(rr) < 0, -1.0, 1.0)[None, :]


def energy_rank(eigenvalues: np.ndarray, energy: float = 0.8, lo: int = 32, hi: int = 256) -> int:
    """Smallest even r with cumulative energy ≥ ``energy``, clipped to ``[lo, hi]`` (docs/method.md §2)."""
    w = np.clip(np.sort(eigenvalues)[::-1], 0, None)
    cum = np.cumsum(w) / w.sum()
    r = int(np.searchsorted(cum, energy) + 1)
    r += r % 2
    return int(min(max(r, lo), hi, w.size - w.size % 2))


@dataclass
class Frame:
    """A fitted joint frame (all float64).

    Attributes
    ----------
    mu_text, mu_image
        ``(d,)`` modality means.
    eigenvalues
        ``(d,)`` eigenvalues of Σ, descending.
    U
        ``(d, r)`` dominant eigenvectors.
    P
        ``(d, p)`` the next ``p`` eigenvectors (leading complement directions).
    R
        ``(r, r)`` orthogonal mixing matrix (``z = Rᵀ a``).
    lam
        The ridge λ added to Σ.
    """

    mu_text: np.ndarray
    mu_image: np.ndarray
    eigenvalues: np.ndarray
    U: np.ndarray
    P: np.ndarray
    R: np.ndarray
    lam: float

    @property
    def d(self) -> int:
        return int(self.U.shape[0])

    @property
    def r(self) -> int:
        return int(self.U.shape[1])

    @property
    def p(self) -> int:
        return int(self.P.shape[1])

    def split(self, x: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(a, b)`` with ``a = Uᵀ(x − mean)`` ``(n, r)`` and ``b = (I − UUᵀ)(x − mean)`` ``(n, d)``.

        ``x = mean + U a + b`` exactly (up to rounding).
        """
        c = x - mean
        a = c @ self.U
        return a, c - a @ self.U.T

    def mix(self, a: np.ndarray) -> np.ndarray:
        """``z = Rᵀ a`` in row form."""
        return a @ self.R

    def unmix(self, z: np.ndarray) -> np.ndarray:
        """``a = R z`` in row form."""
        return z @ self.R.T

    def to_arrays(self, prefix: str = "frame_") -> dict[str, np.ndarray]:
        return {
            f"{prefix}mu_text": self.mu_text,
            f"{prefix}mu_image": self.mu_image,
            f"{prefix}eigenvalues": self.eigenvalues,
            f"{prefix}U": self.U,
            f"{prefix}P": self.P,
            f"{prefix}R": self.R,
            f"{prefix}lam": np.asarray(self.lam),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "frame_") -> Frame:
        return cls(
            mu_text=arrays[f"{prefix}mu_text"],
            mu_image=arrays[f"{prefix}mu_image"],
            eigenvalues=arrays[f"{prefix}eigenvalues"],
            U=arrays[f"{prefix}U"],
            P=arrays[f"{prefix}P"],
            R=arrays[f"{prefix}R"],
            lam=float(arrays[f"{prefix}lam"]),
        )


def fit_frame(
    text: Moments,
    image: Moments,
    *,
    r: int | None = 64,
    p: int = 64,
    energy: float = 0.8,
    mixing: str = "haar",
    seed: int = 0,
    ridge: float = 1e-6,
) -> Frame:
    """Fit the joint frame from the two modalities' moments.

    Parameters
    ----------
    text, image
        Moments of the L2-normalised embeddings.
    r
        Dominant rank (even); ``None`` uses the energy rule (:func:`energy_rank`).
    p
        Number of leading complement directions kept (clipped to ``d − r``).
    mixing
        ``"haar"`` (fixed-seed Haar R) or ``"identity"`` (R = I).
    ridge
        Relative ridge: ``λ = ridge · tr(Σ_t + Σ_i)/d``.
    """
    if text.dim != image.dim:
        raise InputError(f"text d={text.dim} and image d={image.dim} differ")
    d = text.dim
    sigma = text.covariance() + image.covariance()
    lam = float(ridge * np.trace(sigma) / d)
    sigma[np.diag_indices(d)] += lam
    w, q = np.linalg.eigh(sigma)
    w, q = w[::-1].copy(), q[:, ::-1]
    # eigh's eigenvector signs are arbitrary; fix them (largest-|entry| positive) so a frame
    # is reproducible across LAPACK builds.
    q = q * np.sign(q[np.argmax(np.abs(q), axis=0), np.arange(d)])[None, :]
    if r is None:
        r = energy_rank(w, energy)
    if r <= 0 or r % 2 or r > d:
        raise InputError(f"frame rank r must be even and in [2, {d}], got {r}")
    p = int(max(0, min(p, d - r)))
    if mixing == "haar":
        rot = haar_orthogonal(r, seed)
    elif mixing == "identity":
        rot = np.eye(r)
    else:
        raise InputError(f"mixing must be 'haar' or 'identity', got {mixing!r}")
    frame = Frame(
        mu_text=np.array(text.mean, dtype=np.float64),
        mu_image=np.array(image.mean, dtype=np.float64),
        eigenvalues=w,
        U=np.ascontiguousarray(q[:, :r]),
        P=np.ascontiguousarray(q[:, r : r + p]),
        R=rot,
        lam=lam,
    )
    logger.info("joint frame: d=%d r=%d p=%d λ=%.3g energy(r)=%.3f mixing=%s", d, r, p, lam,
                float(w[:r].sum() / w.sum()), mixing)
    return frame
