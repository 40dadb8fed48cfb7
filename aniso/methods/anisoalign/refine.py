"""Stage II: the instance-conditioned, tanh-bounded refinement and its fit (docs/method.md §5).

The map starts from the closed-form point ``y = μ_i + A(x − μ_t)`` (:mod:`aniso.methods.anisoalign.closed_form`).
In the joint frame, ``a = Uᵀ(y − μ_i)``, ``z = Rᵀ a`` and the blocks of ``z`` in polar form give
the network input ``h = [cos θ, sin θ, ℓ̃, P-coordinates / σ_V]``. The MLP outputs
``(u_θ, u_ℓ, u_V)`` and the corrections are

    Δθ = δ_θ tanh(u_θ),   Δℓ = δ_ℓ tanh(u_ℓ),   Δb = δ_V σ_V ⊙ tanh(u_V)   (along P)

applied as *additive deltas* to ``y`` (``Δz = e^{Δℓ} Rot(Δθ) z − z``), so a zero network gives
``Δ = 0`` exactly and the map is then the closed form bit for bit. The last layer is
zero-initialised, so training starts at the closed form.

Inference (:meth:`Refiner.apply`) runs in float64 numpy with row-wise operations only: it is
deterministic, device-independent and chunk-invariant. Training uses torch (float32; GPU when
available).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from aniso.methods.anisoalign.frame import Frame
from aniso.methods.anisoalign.polar import EPS32, EPS64, rotate_scale_torch, to_polar, to_polar_torch
from aniso.numeric.arrays import l2_normalize
from aniso.numeric.rowwise import rowwise_matmul

if TYPE_CHECKING:  # training only: inference (Refiner.apply) is numpy and never imports torch
    import torch

    from aniso.methods.anisoalign.prior import PhasePrior

__all__ = ["Refiner", "RefineNet", "LossWeights", "fit_refiner"]

logger = logging.getLogger(__name__)

_MLP_KEYS = ("ln_w", "ln_b", "w1", "b1", "w2", "b2", "w3", "b3")


@dataclass
class LossWeights:
    """Weights of eq. (23); ``prior`` is ramped from 0 over the first ``ramp`` fraction of steps."""

    prior: float = 1.0
    dist: float = 1.0
    rel: float = 1.0
    inst: float = 0.5
    reg: float = 1e-3
    ramp: float = 0.1


def _refine_net_class() -> type:
    """:class:`RefineNet`, defined on first use so that importing this module needs no torch."""
    global _REFINE_NET
    if _REFINE_NET is not None:
        return _REFINE_NET
    import torch
    from torch import nn

    class RefineNet(nn.Module):
        """``(3K + p) → hidden → hidden → (2K + p)``, LayerNorm on input, SiLU, zero-init last layer."""

        def __init__(self, k: int, p: int, hidden: int) -> None:
            super().__init__()
            self.k, self.p = k, p
            self.ln = nn.LayerNorm(3 * k + p)
            self.l1 = nn.Linear(3 * k + p, hidden)
            self.l2 = nn.Linear(hidden, hidden)
            self.l3 = nn.Linear(hidden, 2 * k + p)
            nn.init.zeros_(self.l3.weight)
            nn.init.zeros_(self.l3.bias)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return self.l3(nn.functional.silu(self.l2(nn.functional.silu(self.l1(self.ln(h))))))

        def to_arrays(self) -> dict[str, np.ndarray]:
            t = [self.ln.weight, self.ln.bias, self.l1.weight, self.l1.bias, self.l2.weight, self.l2.bias,
                 self.l3.weight, self.l3.bias]
            return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in zip(_MLP_KEYS, t)}

    RefineNet.__qualname__ = "RefineNet"
    _REFINE_NET = RefineNet
    return _REFINE_NET


_REFINE_NET: type | None = None


def __getattr__(name: str) -> Any:
    if name == "RefineNet":
        return _refine_net_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Refiner:
    """The frozen Stage II map: frame, closed form, input standardisation, bounds and MLP weights.

    ``mlp`` is ``None`` for the closed-form-only map.
    """

    frame: Frame
    A: np.ndarray
    l_mean: np.ndarray  # (K,) standardisation of the network's log-radius input
    l_std: np.ndarray
    sig_v: np.ndarray  # (p,) image std along P
    bounds: np.ndarray  # (3,) δ_θ, δ_ℓ, δ_V
    bounded: bool = True
    mlp: dict[str, np.ndarray] | None = field(default=None)

    # -- shared pieces ---------------------------------------------------------------------
    def centred_init(self, x: np.ndarray) -> np.ndarray:
        """``A(x − μ_t)``: the closed-form point relative to μ_i."""
        return rowwise_matmul(x - self.frame.mu_text, self.A.T)

    def _bound(self, u: np.ndarray, delta: float) -> np.ndarray:
        return delta * (np.tanh(u) if self.bounded else u)

    def corrections(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(yc, z, Δθ, Δℓ, Δb)`` for L2-normalised float64 rows (numpy; float64 MLP)."""
        f = self.frame
        yc = self.centred_init(x)
        z = rowwise_matmul(rowwise_matmul(yc, f.U), f.R)
        k, p = z.shape[1] // 2, f.p
        if self.mlp is None:
            zero = np.zeros((x.shape[0], k))
            return yc, z, zero, zero.copy(), np.zeros((x.shape[0], p))
        theta, ell = to_polar(z, EPS64)
        h = np.concatenate([np.cos(theta), np.sin(theta), (ell - self.l_mean) / self.l_std,
                            rowwise_matmul(yc, f.P) / self.sig_v], axis=1)
        w = {key: self.mlp[key].astype(np.float64) for key in _MLP_KEYS}
        mu = h.mean(1, keepdims=True)
        var = ((h - mu) ** 2).mean(1, keepdims=True)
        h = (h - mu) / np.sqrt(var + 1e-5) * w["ln_w"] + w["ln_b"]
        for i in (1, 2):
            h = rowwise_matmul(h, w[f"w{i}"].T) + w[f"b{i}"]
            h = h / (1 + np.exp(-h))  # SiLU
        u = rowwise_matmul(h, w["w3"].T) + w["b3"]
        return (yc, z, self._bound(u[:, :k], self.bounds[0]), self._bound(u[:, k:2 * k], self.bounds[1]),
                self._bound(u[:, 2 * k:], self.bounds[2]) * self.sig_v)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """x̂ = normalize(μ_i + y_c + Δ) for L2-normalised float64 rows (one forward pass)."""
        f = self.frame
        if self.mlp is None:  # the closed form: no frame coordinates needed
            return l2_normalize(f.mu_image + self.centred_init(x))
        yc, z, dth, dl, db = self.corrections(x)
        z1, z2 = z[:, 0::2], z[:, 1::2]
        c, s, g = np.cos(dth), np.sin(dth), np.exp(dl)
        dz = np.empty_like(z)
        dz[:, 0::2] = g * (c * z1 - s * z2) - z1
        dz[:, 1::2] = g * (s * z1 + c * z2) - z2
        delta = rowwise_matmul(rowwise_matmul(dz, f.R.T), f.U.T) + rowwise_matmul(db, f.P.T)
        return l2_normalize(f.mu_image + yc + delta)

    def to_arrays(self, prefix: str = "ref_") -> dict[str, np.ndarray]:
        out = {f"{prefix}l_mean": self.l_mean, f"{prefix}l_std": self.l_std, f"{prefix}sig_v": self.sig_v,
               f"{prefix}bounds": self.bounds}
        if self.mlp is not None:
            out.update({f"{prefix}mlp_{k}": v for k, v in self.mlp.items()})
        return out


# -- training -------------------------------------------------------------------------------
def _mmd2(a: torch.Tensor, b: torch.Tensor, scales: tuple[float, ...] = (0.5, 1.0, 2.0)) -> torch.Tensor:
    import torch

    daa, dbb, dab = torch.cdist(a, a) ** 2, torch.cdist(b, b) ** 2, torch.cdist(a, b) ** 2
    bw = torch.median(torch.sqrt(dbb[dbb > 0])).detach().clamp_min(1e-6)
    m, n = a.shape[0], b.shape[0]
    total = a.new_zeros(())
    for sc in scales:
        gam = 1.0 / (2 * (bw * sc) ** 2)
        kaa, kbb, kab = torch.exp(-gam * daa), torch.exp(-gam * dbb), torch.exp(-gam * dab)
        total = total + (kaa.sum() - m) / (m * (m - 1)) + (kbb.sum() - n) / (n * (n - 1)) - 2 * kab.mean()
    return total / len(scales)


def _cosmat(v: torch.Tensor) -> torch.Tensor:
    from torch import nn

    v = nn.functional.normalize(v, dim=1)
    return v @ v.T


def fit_refiner(
    refiner: Refiner,
    prior: PhasePrior | None,
    text: np.ndarray,
    image: np.ndarray,
    *,
    hidden: int = 512,
    steps: int = 1000,
    batch_size: int = 1024,
    lr: float = 5e-4,
    weights: LossWeights | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> Refiner:
    """Train the MLP of ``refiner`` (in place) on L2-normalised text and image rows; returns it."""
    import torch
    from torch import nn

    RefineNet = _refine_net_class()  # noqa: N806
    weights = weights or LossWeights()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    f = refiner.frame
    k, p = f.r // 2, f.p
    dt = torch.float32
    tt = lambda a: torch.as_tensor(np.asarray(a), dtype=dt, device=device)  # noqa: E731
    mu_t, mu_i, a_mat, u_mat, r_mat, p_mat = tt(f.mu_text), tt(f.mu_image), tt(refiner.A), tt(f.U), tt(f.R), tt(f.P)
    l_mean, l_std, sig_v = tt(refiner.l_mean), tt(refiner.l_std), tt(refiner.sig_v)
    d_th, d_l, d_v = (float(b) for b in refiner.bounds)
    xt, xi = tt(text), tt(image)
    net = RefineNet(k, p, hidden).to(device)
    if prior is not None:
        prior = prior.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    bnd = torch.tanh if refiner.bounded else (lambda u: u)
    last: dict[str, float] = {}
    for step in range(steps):
        it = torch.randint(0, xt.shape[0], (min(batch_size, xt.shape[0]),), generator=gen).to(device)
        ii = torch.randint(0, xi.shape[0], (min(batch_size, xi.shape[0]),), generator=gen).to(device)
        x, img = xt[it], xi[ii]
        yc = (x - mu_t) @ a_mat.T
        z = (yc @ u_mat) @ r_mat
        theta, ell = to_polar_torch(z, EPS32)
        h = torch.cat([torch.cos(theta), torch.sin(theta), (ell - l_mean) / l_std, (yc @ p_mat) / sig_v], 1)
        u = net(h)
        tu = [bnd(u[:, :k]), bnd(u[:, k:2 * k]), bnd(u[:, 2 * k:])]
        dz = rotate_scale_torch(z, d_th * tu[0], d_l * tu[1]) - z
        xh = nn.functional.normalize(mu_i + yc + (dz @ r_mat.T) @ u_mat.T + (d_v * sig_v * tu[2]) @ p_mat.T, dim=1)
        cen, src = xh - mu_i, x - mu_t
        a_h, a_i = cen @ u_mat, (img - mu_i) @ u_mat
        feat_h = torch.cat([a_h, (cen - a_h @ u_mat.T).norm(dim=1, keepdim=True)], 1)
        feat_i = torch.cat([a_i, ((img - mu_i) - a_i @ u_mat.T).norm(dim=1, keepdim=True)], 1)
        losses = {
            "dist": _mmd2(feat_h, feat_i),
            "rel": ((_cosmat(cen) - _cosmat(src)) ** 2).mean(),
            "inst": (1 - nn.functional.cosine_similarity(cen, src, dim=1)).mean(),
            "reg": sum((t**2).sum(1).mean() for t in tu) / (2 * k + p),
        }
        ramp = min(1.0, (step + 1) / max(1.0, weights.ramp * steps))
        total = weights.dist * losses["dist"] + weights.rel * losses["rel"] + weights.inst * losses["inst"]
        total = total + weights.reg * losses["reg"]
        if prior is not None and weights.prior > 0:
            th2, l2 = to_polar_torch(a_h @ r_mat, EPS32)
            losses["prior"] = (prior.energy(th2, l2) + prior.radial_nll(l2)).mean() / k
            total = total + ramp * weights.prior * losses["prior"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        last = {key: float(v.detach()) if torch.is_tensor(v) else float(v) for key, v in losses.items()}
    refiner.mlp = net.to_arrays()
    logger.info("stage II: %d steps, hidden=%d, last losses %s", steps, hidden,
                ", ".join(f"{k}={v:.4g}" for k, v in last.items()))
    if prior is not None:
        prior.cpu()
    return refiner


def input_statistics(refiner: Refiner, text: np.ndarray, image: np.ndarray) -> None:
    """Set the network's input standardisation (text after init) and σ_V (image) in place."""
    f = refiner.frame
    yc = refiner.centred_init(text)
    _, ell = to_polar((yc @ f.U) @ f.R, EPS64)
    refiner.l_mean = ell.mean(0)
    refiner.l_std = np.maximum(ell.std(0), 1e-6)
    refiner.sig_v = np.maximum(((image - f.mu_image) @ f.P).std(0), 1e-8) if f.p else np.ones(0)
    if not math.isfinite(float(refiner.l_std.sum())):
        raise FloatingPointError("non-finite input statistics in Stage II")
