"""Synthetic paired embeddings with a planted, known modality gap (tests, benchmarks, demo).

Text and image share a semantic backbone (a low-rank latent mapped into R^d). The image side is
the text side plus (1) a centroid shift along a fixed direction and (2) a low-rank anisotropic
residual of ``gap_rank`` strong directions, plus small isotropic noise; everything is then
L2-normalised. The planted directions are returned so tests can check that diagnostics find them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PlantedGap", "planted_gap"]


@dataclass(frozen=True)
class PlantedGap:
    text: np.ndarray  # (n, d) float32, unit norm
    image: np.ndarray  # (n, d) float32, unit norm; row k pairs with text row k
    shift: np.ndarray  # (d,) planted centroid shift direction (unit)
    residual_dirs: np.ndarray  # (d, gap_rank) planted anisotropic residual directions


def planted_gap(
    n: int = 2000,
    d: int = 64,
    *,
    latent: int = 16,
    gap_rank: int = 3,
    cone: float = 0.6,
    residual_scale: float = 0.35,
    noise: float = 0.02,
    seed: int = 0,
) -> PlantedGap:
    """Paired (text, image) embeddings with a centroid gap (≈0.9 at ``cone=0.6``) and a low-rank
    anisotropic residual of ``gap_rank`` directions."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, latent + gap_rank + 2)))[0]
    semantic_dirs = basis[:, :latent]
    residual_dirs = basis[:, latent : latent + gap_rank]
    cone_text, cone_image = basis[:, -2], basis[:, -1]
    z = rng.normal(size=(n, latent)) * np.linspace(1.0, 0.3, latent)
    semantics = z @ semantic_dirs.T * 0.25
    text = semantics + cone * cone_text + rng.normal(scale=noise, size=(n, d))
    strengths = residual_scale * np.linspace(1.0, 0.5, gap_rank)
    residual = (rng.normal(size=(n, gap_rank)) * strengths) @ residual_dirs.T
    image = semantics + cone * cone_image + residual + rng.normal(scale=noise, size=(n, d))
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    image = image / np.linalg.norm(image, axis=1, keepdims=True)
    direction = image.mean(0) - text.mean(0)
    return PlantedGap(
        text=text.astype(np.float32),
        image=image.astype(np.float32),
        shift=direction / np.linalg.norm(direction),
        residual_dirs=residual_dirs,
    )
