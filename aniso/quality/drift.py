"""The ``input_drift`` gate of a frozen-model run: are the new inputs still what the model was fitted on?

A fitting run stores a small reference beside its model (``model/reference.npz``: the leading
eigenvalues and eigenvectors of the text and image samples' covariances, and the sample sizes);
the model itself holds the full-corpus centroids (``mu_text``, ``mu_image``). A frozen-model run
draws the same deterministic samples of its new inputs (:func:`aniso.stages.gate.gate_rows`) and
compares (:data:`DRIFT_METRICS`, bounds in ``conf/gates.yaml`` under ``input_drift``):

* the centroid shift of each modality, as a fraction of the model's modality gap
  ‖μ_image − μ_text‖ (sampling noise of a 2,048-row sample is a few percent of a CLIP-like gap);
* the leading spectrum: the largest |log ratio| of the top ``top_k`` trace-normalised eigenvalues;
* the subspace overlap ‖U_refᵀ U_new‖²_F / q: how much of the fit's q significant leading text
  directions lies inside the new sample's top-``top_k`` subspace (1: inside; q/d: unrelated). A
  direction is significant when its eigenvalue exceeds 1.5 × the largest eigenvalue an isotropic
  sample of the same size and dimension reaches, (1 + √(d/n))² / d of the trace (the
  Marchenko-Pastur edge): an isotropic spectrum's top directions are sampling noise and would
  otherwise read as drift. With no significant direction the overlap is 1 (nothing to track).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from aniso._fs import exists, filesystem, join_url, write_atomic
from aniso.errors import ConfigError
from aniso.numeric.arrays import l2_normalize

__all__ = ["REFERENCE_FILE", "DRIFT_METRICS", "DriftBounds", "load_drift_bounds", "reference_from",
           "save_reference", "load_reference", "drift_metrics", "judge_drift"]

logger = logging.getLogger(__name__)

#: The drift reference inside a model folder (listed with its sha256 in the manifest's ``model.files``).
REFERENCE_FILE = "reference.npz"

#: metric -> (bound key in conf/gates.yaml ``input_drift``, "max" or "min", one-line meaning)
DRIFT_METRICS: dict[str, tuple[str, str, str]] = {
    "text_centroid_shift": ("centroid_shift_max", "max",
                            "how far the text centroid moved since the fit, as a fraction of the model's modality gap"),
    "image_centroid_shift": ("centroid_shift_max", "max",
                             "how far the image centroid moved since the fit, as a fraction of the modality gap"),
    "text_spectrum_change": ("spectrum_log_ratio_max", "max",
                             "largest |log ratio| of the text's leading trace-normalised eigenvalues, new vs fit"),
    "image_spectrum_change": ("spectrum_log_ratio_max", "max",
                              "largest |log ratio| of the images' leading trace-normalised eigenvalues, new vs fit"),
    "text_subspace_overlap": ("subspace_overlap_min", "min",
                              "how much of the fit's significant leading text directions lies in the new top "
                              "directions (1: same; low: they turned)"),
}


class DriftBounds(dict):
    """``{"centroid_shift_max", "spectrum_log_ratio_max", "subspace_overlap_min", "top_k"}``."""


_DEFAULTS = {"centroid_shift_max": 0.25, "spectrum_log_ratio_max": 0.7, "subspace_overlap_min": 0.5, "top_k": 4}


def load_drift_bounds(path: str | Path | None = None) -> DriftBounds:
    """The ``input_drift`` bounds of a gate suites file (default ``conf/gates.yaml``)."""
    from aniso._config_text import read_yaml
    from aniso.config import CONF_DIR

    path = Path(path) if path else CONF_DIR / "gates.yaml"
    section = read_yaml(path, what="gate suites file").get("input_drift") or {}
    if not isinstance(section, dict) or set(section) - set(_DEFAULTS):
        raise ConfigError(f"{path}: 'input_drift' must map some of {sorted(_DEFAULTS)} to numbers (got {section!r})")
    bounds = DriftBounds({**_DEFAULTS, **section})
    for key, value in bounds.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise ConfigError(f"{path}: input_drift.{key} must be a non-negative number (got {value!r})")
    if int(bounds["top_k"]) < 1:
        raise ConfigError(f"{path}: input_drift.top_k must be at least 1")
    return bounds


def _centred(sample: np.ndarray) -> np.ndarray:
    x = l2_normalize(np.asarray(sample))
    return x - x.mean(axis=0)


def _leading(sample: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` trace-normalised eigenvalues and eigenvectors ``(d, k)`` of a sample's covariance."""
    x = _centred(sample)
    # the right singular vectors of the centred sample: no d x d matrix beyond the sample's rank
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    values = s**2 / max(float(np.sum(s**2)), 1e-300)
    k = min(k, values.size)
    return values[:k], vt[:k].T


def reference_from(text: np.ndarray, image: np.ndarray | None, k: int) -> dict[str, np.ndarray]:
    """The drift reference of a fitting run's gate samples."""
    ref = {"k": np.array(k), "n": np.array(len(text)), "d": np.array(np.asarray(text).shape[1])}
    ref["text_values"], ref["text_vectors"] = _leading(text, k)
    if image is not None and len(image):
        ref["image_values"], _ = _leading(image, k)
    return ref


def save_reference(model_url: str, reference: dict[str, np.ndarray], storage_options: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **reference)
    write_atomic(join_url(model_url, REFERENCE_FILE), buffer.getvalue(), storage_options)


def load_reference(model_url: str, storage_options: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The reference saved beside a model, or None (a model fitted before references existed)."""
    url = join_url(model_url, REFERENCE_FILE)
    if not exists(url, storage_options):
        return None
    fs, path = filesystem(url, storage_options)
    with np.load(io.BytesIO(fs.cat_file(path)), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _log_ratio(new: np.ndarray, old: np.ndarray) -> float:
    k = min(new.size, old.size)
    return float(np.max(np.abs(np.log(np.maximum(new[:k], 1e-12) / np.maximum(old[:k], 1e-12))))) if k else 0.0


def drift_metrics(reference: dict[str, np.ndarray], mu_text: np.ndarray, mu_image: np.ndarray,
                  text: np.ndarray, image: np.ndarray | None) -> dict[str, float]:
    """Every :data:`DRIFT_METRICS` value of the new samples against the model's reference."""
    k = int(reference["k"])
    gap = max(float(np.linalg.norm(mu_image - mu_text)), 1e-12)
    unit = l2_normalize(text)
    values, vectors = _leading(text, k)
    ref_values, ref_vectors = reference["text_values"], reference["text_vectors"]
    d, n = int(reference.get("d", ref_vectors.shape[0])), int(reference.get("n", 1))
    edge = (1.0 + np.sqrt(d / max(n, 1))) ** 2 / d  # largest eigenvalue share of an isotropic sample
    q = int(np.sum(ref_values > 1.5 * edge))
    overlap = float(np.sum((ref_vectors[:, :q].T @ vectors) ** 2)) / q if q else 1.0
    out = {
        "text_centroid_shift": float(np.linalg.norm(unit.mean(axis=0) - mu_text)) / gap,
        "text_spectrum_change": _log_ratio(values, ref_values),
        "text_subspace_overlap": overlap,
    }
    if image is not None and len(image):
        img = l2_normalize(image)
        out["image_centroid_shift"] = float(np.linalg.norm(img.mean(axis=0) - mu_image)) / gap
        if "image_values" in reference:
            out["image_spectrum_change"] = _log_ratio(_leading(image, k)[0], reference["image_values"])
    return out


def judge_drift(metrics: dict[str, float], bounds: DriftBounds) -> list[dict[str, Any]]:
    """One gate result per metric: ``{"name", "observed", "bound", "passed", "table", "meaning"}``."""
    results = []
    for name, value in metrics.items():
        key, side, meaning = DRIFT_METRICS[name]
        bound = float(bounds[key])
        passed = bool(np.isfinite(value)) and (value <= bound if side == "max" else value >= bound)
        results.append({"name": f"input_drift:{name}", "observed": round(float(value), 6),
                        "bound": f"{'<=' if side == 'max' else '>='} {bound:g}", "passed": passed,
                        "table": "input_drift", "meaning": meaning})
    return results
