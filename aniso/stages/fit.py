"""The fit stage: the aligner from the statistics and samples, then the centroid calibration pass.

Idempotent, one call per shard or per run (see :mod:`aniso.stages`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aniso.errors import InputError, StoreNotFound
from aniso.io.rows import open_rows
from aniso.methods import Aligner, get_aligner
from aniso.numeric.sampling import sample_indices
from aniso.stages.apply import APPLY_BLOCK
from aniso.stages.statistics import load_moments, sample_rows

__all__ = ["fit_model", "calibration_shard", "finish_calibration", "model_is_final"]


def fit_model(
    model_url: str, method: str, params: dict[str, Any], text_stats_url: str, image_stats_url: str,
    text_store_url: str, image_store_url: str, *, seed: int, sample_size: int | None,
    storage_options: dict[str, Any],
) -> str:
    """Fit the aligner (everything but the calibration) and save it; skipped when a readable
    model is saved already (a damaged one is fitted again)."""
    if Aligner.saved(model_url, storage_options) is not None:
        return model_url
    aligner = get_aligner(method, **params)
    text_stats = load_moments(text_stats_url, storage_options)
    image_stats = load_moments(image_stats_url, storage_options)
    samples: dict[str, np.ndarray | None] = {"text": None, "image": None}
    want = sample_size or aligner.sample_size
    if aligner.sample_size > 0:
        for name, stats, store_url, sub_seed in (
            ("text", text_stats, text_store_url, seed), ("image", image_stats, image_store_url, seed + 1)
        ):
            if name not in aligner.sampled:  # a sample the fit does not read is a pass saved
                continue
            store = open_rows(store_url, storage_options)
            samples[name] = sample_rows(store, sample_indices(stats.n, want, sub_seed))
    aligner.fit_statistics(text_stats, image_stats, text_sample=samples["text"], image_sample=samples["image"])
    aligner.save(model_url, storage_options)
    return model_url


def calibration_shard(model_url: str, text_store_url: str, shard: int, storage_options: dict[str, Any]) -> dict[str, Any]:
    """Partial sum of x̂ over one shard of text (the calibration pass)."""
    aligner = _saved(model_url, storage_options)
    emb, _, valid = open_rows(text_store_url, storage_options).read_shard(shard, with_ids=False)
    if not valid.any():
        return {"sum": [0.0] * aligner.dim, "n": 0}
    rows = emb if valid.all() else emb[valid]
    total, count = np.zeros(aligner.dim or rows.shape[1]), 0
    for start in range(0, rows.shape[0], APPLY_BLOCK):  # bounded float64 temporaries
        part_sum, part_n = aligner.premap_sum(rows[start : start + APPLY_BLOCK])
        total += part_sum
        count += part_n
    return {"sum": total.tolist(), "n": count}


def finish_calibration(model_url: str, partials: list[dict[str, Any]], storage_options: dict[str, Any]) -> str:
    """Set μ̂ from the partial sums (in shard order, so the result is reproducible) and re-save."""
    aligner = _saved(model_url, storage_options)
    if not aligner.calibrate or aligner.mu_hat is not None:
        return model_url
    total = np.sum([np.asarray(p["sum"], dtype=np.float64) for p in partials], axis=0)
    count = sum(p["n"] for p in partials)
    if count == 0:
        raise InputError("calibration saw no valid text rows")
    aligner.set_calibration(total / count).save(model_url, storage_options)
    return model_url


def model_is_final(model_url: str, storage_options: dict[str, Any]) -> bool:
    """Whether a complete, readable model (calibrated where the method calibrates) is saved."""
    aligner = Aligner.saved(model_url, storage_options)
    return aligner is not None and aligner.fitted


def _saved(model_url: str, storage_options: dict[str, Any]) -> Aligner:
    """The readable model at ``model_url`` (damaged ones skipped); StoreNotFound when none."""
    aligner = Aligner.saved(model_url, storage_options)
    if aligner is None:
        raise StoreNotFound(f"no readable model at {model_url}; rerun to fit it again")
    return aligner
