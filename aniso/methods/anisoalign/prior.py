"""Stage I: a periodic phase prior on image embeddings only (docs/method.md §4).

Energy on the torus T^K, 2π-periodic in every phase by construction::

    E(θ, ℓ) = − Σ_k Σ_m (A_km cos mθ_k + B_km sin mθ_k)          marginal phase anchors
              − Σ_kl (C_kl cos(θ_k − θ_l) + D_kl sin(θ_k − θ_l))  low-rank couplings
              − h([cos θ, sin θ, ℓ̃])                              small periodic MLP

trained by wrapped denoising score matching (σ ~ LogUniform[σ_min, σ_max]); the drift field is
``v = −∇_θ E``. The radial model is a per-block Gaussian on ℓ_k fitted in closed form.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

__all__ = ["PhasePrior", "fit_prior", "wrap"]

logger = logging.getLogger(__name__)


def wrap(u: torch.Tensor) -> torch.Tensor:
    """Angle difference wrapped to (−π, π]."""
    return torch.atan2(torch.sin(u), torch.cos(u))


class PhasePrior(nn.Module):
    """The torus energy plus the per-block log-radius Gaussian (buffers ``l_mean``, ``l_std``)."""

    def __init__(self, k: int, *, order: int = 2, rank: int = 8, hidden: int = 256) -> None:
        super().__init__()
        self.k, self.order = k, order
        self.anchor_cos = nn.Parameter(torch.zeros(k, order))
        self.anchor_sin = nn.Parameter(torch.zeros(k, order))
        rank = max(1, min(rank, k))
        self.c1 = nn.Parameter(torch.randn(k, rank) * 0.01)
        self.c2 = nn.Parameter(torch.randn(k, rank) * 0.01)
        self.d1 = nn.Parameter(torch.randn(k, rank) * 0.01)
        self.d2 = nn.Parameter(torch.randn(k, rank) * 0.01)
        self.mlp = nn.Sequential(nn.Linear(3 * k + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))
        self.register_buffer("l_mean", torch.zeros(k))
        self.register_buffer("l_std", torch.ones(k))

    def energy(self, theta: torch.Tensor, ell: torch.Tensor, log_sigma: torch.Tensor | None = None) -> torch.Tensor:
        """Phase energy ``E(θ, ℓ)`` per row, ``(n,)``."""
        m = torch.arange(1, self.order + 1, device=theta.device, dtype=theta.dtype)
        mt = theta[:, :, None] * m
        e = -(torch.cos(mt) * self.anchor_cos + torch.sin(mt) * self.anchor_sin).sum((1, 2))
        c, s = torch.cos(theta), torch.sin(theta)
        # Σ C_kl cos(θk−θl) = cᵀCc + sᵀCs and Σ D_kl sin(θk−θl) = sᵀDc − cᵀDs, with C, D low rank.
        cc, sc = c @ self.c1, s @ self.c1
        e = e - ((cc * (c @ self.c2)).sum(1) + (sc * (s @ self.c2)).sum(1))
        e = e - ((s @ self.d1) * (c @ self.d2)).sum(1) + ((c @ self.d1) * (s @ self.d2)).sum(1)
        if log_sigma is None:
            log_sigma = torch.full((theta.shape[0],), math.log(0.1), device=theta.device, dtype=theta.dtype)
        lt = (ell - self.l_mean) / self.l_std
        return e - self.mlp(torch.cat([c, s, lt, log_sigma[:, None]], 1))[:, 0]

    def radial_nll(self, ell: torch.Tensor) -> torch.Tensor:
        """Per-row Gaussian NLL of the log-radii (up to a constant)."""
        return (0.5 * ((ell - self.l_mean) / self.l_std) ** 2 + torch.log(self.l_std)).sum(1)

    def drift(self, theta: torch.Tensor, ell: torch.Tensor, log_sigma: torch.Tensor | None = None,
              create_graph: bool = False) -> torch.Tensor:
        """``v = −∇_θ E``, the phase velocity toward higher image density."""
        if not theta.requires_grad:
            theta = theta.detach().requires_grad_(True)
        e = self.energy(theta, ell, log_sigma).sum()
        (grad,) = torch.autograd.grad(e, theta, create_graph=create_graph)
        return -grad

    # -- persistence as plain numpy arrays ------------------------------------------------
    def to_arrays(self, prefix: str = "prior_") -> dict[str, np.ndarray]:
        return {prefix + k.replace(".", "__"): v.detach().cpu().numpy() for k, v in self.state_dict().items()}

    def load_arrays(self, arrays: dict[str, np.ndarray], prefix: str = "prior_") -> None:
        state = {k[len(prefix):].replace("__", "."): torch.from_numpy(np.array(v)) for k, v in arrays.items()
                 if k.startswith(prefix)}
        self.load_state_dict(state)


def fit_prior(
    theta: np.ndarray,
    ell: np.ndarray,
    *,
    steps: int = 1000,
    batch_size: int = 1024,
    lr: float = 1e-3,
    order: int = 2,
    rank: int = 8,
    hidden: int = 256,
    sigma_range: tuple[float, float] = (0.05, 0.5),
    seed: int = 0,
    device: str = "cpu",
) -> PhasePrior:
    """Train the prior on image phases ``theta`` and log-radii ``ell`` (each ``(n, K)``)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n, k = theta.shape
    prior = PhasePrior(k, order=order, rank=rank, hidden=hidden)
    # Anchors start at the circular statistics (docs/method.md §4): β = circmean, κ ≈ R̄(2−R̄²)/(1−R̄²).
    res = np.exp(1j * theta).mean(0)
    rbar = np.clip(np.abs(res), 0, 0.95)
    kappa = rbar * (2 - rbar**2) / (1 - rbar**2)
    with torch.no_grad():
        prior.anchor_cos[:, 0] = torch.as_tensor(kappa * np.cos(np.angle(res)), dtype=torch.float32)
        prior.anchor_sin[:, 0] = torch.as_tensor(kappa * np.sin(np.angle(res)), dtype=torch.float32)
        prior.l_mean.copy_(torch.as_tensor(ell.mean(0), dtype=torch.float32))
        prior.l_std.copy_(torch.as_tensor(np.maximum(ell.std(0), 1e-3), dtype=torch.float32))
    prior.to(device)
    th = torch.as_tensor(theta, dtype=torch.float32, device=device)
    el = torch.as_tensor(ell, dtype=torch.float32, device=device)
    opt = torch.optim.AdamW(prior.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    lo, hi = math.log(sigma_range[0]), math.log(sigma_range[1])
    loss_val = float("nan")
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen).to(device)
        t0, l0 = th[idx], el[idx]
        log_sigma = (lo + (hi - lo) * torch.rand(t0.shape[0], generator=gen)).to(device)
        sigma = torch.exp(log_sigma)[:, None]
        noisy = wrap(t0 + sigma * torch.randn(t0.shape, generator=gen).to(device)).requires_grad_(True)
        v = prior.drift(noisy, l0, log_sigma, create_graph=True)
        target = -wrap(noisy - t0) / sigma**2  # small-σ wrapped-normal score
        loss = (sigma**2 * (v - target) ** 2).sum(1).mean() / k
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_val = float(loss.detach())
    prior.cpu().eval()
    for p in prior.parameters():
        p.requires_grad_(False)
    logger.info("stage I prior: K=%d, %d image rows, %d steps, final DSM loss %.4f", k, n, steps, loss_val)
    return prior
