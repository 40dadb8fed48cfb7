"""Geometric diagnostics (docs/diagnostics.md), on arrays, in float64.

Notation: ``X`` source text, ``S`` substitutes (a method's output for ``X``), ``T`` image
embeddings. Every function L2-normalises its inputs first. Sets larger than ``max_rows`` are
sub-sampled with a seeded generator, so every figure is deterministic for a given ``seed``.

:func:`diagnose` computes the whole table for one method; :func:`format_table` renders several
methods' rows as markdown (what ``aniso diagnose`` prints).
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import stats

from aniso.errors import InputError
from aniso.numeric.arrays import l2_normalize
from aniso.numeric.neighbours import knn_indices, neighbour_overlap

__all__ = [
    "centroid_residual",
    "residual_anisotropy",
    "spectral_correlation",
    "subspace_overlap",
    "knn_indices",
    "knn_overlap",
    "pairwise_spearman",
    "mmd2_rbf",
    "knn_precision_recall",
    "knn_mixing",
    "domain_classifier_accuracy",
    "domain_classifier_by_class",
    "paired_cosine",
    "recall_at_k",
    "diagnose",
    "format_table",
    "METRIC_ORDER",
]

logger = logging.getLogger(__name__)


def _unit(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(f"{what}: expected a non-empty (n, d) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError(f"{what}: contains NaN or Inf")
    return l2_normalize(x)


def _cov_eigh(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors of the population covariance of ``x``."""
    c = x - x.mean(axis=0)
    w, v = np.linalg.eigh(c.T @ c / x.shape[0])
    return w[::-1], v[:, ::-1]


# -- centroid and anisotropy ----------------------------------------------------------------
def centroid_residual(s: np.ndarray, t: np.ndarray) -> float:
    """``‖mean(S) − mean(T)‖₂`` (the Liang et al. gap when ``S`` is raw text)."""
    return float(np.linalg.norm(_unit(s, "S").mean(0) - _unit(t, "T").mean(0)))


def residual_anisotropy(s: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """Residual anisotropy ``A_r = λ_max(Σ_r)/(tr(Σ_r)/d)`` on *paired* rows.

    ``r_n = (t_n − s_n) − mean(t − s)``. Returns ``A_r``, its isotropic Marchenko–Pastur
    baseline ``(1 + √(d/N))²``, top-1/5/10 energy fractions and the effective rank.
    """
    s, t = _unit(s, "S"), _unit(t, "T")
    if s.shape != t.shape:
        raise InputError(f"residual anisotropy needs paired rows: shapes {s.shape} vs {t.shape}")
    n, d = s.shape
    w, _ = _cov_eigh(t - s)
    w = np.clip(w, 0.0, None)
    tr = float(w.sum())
    if tr <= 0:
        return {"A_r": 1.0, "A_r_baseline": (1 + math.sqrt(d / n)) ** 2, "top1": 0.0, "top5": 0.0, "top10": 0.0,
                "eff_rank": float(d)}
    return {
        "A_r": float(w[0] / (tr / d)),
        "A_r_baseline": (1 + math.sqrt(d / n)) ** 2,
        "top1": float(w[:1].sum() / tr),
        "top5": float(w[:5].sum() / tr),
        "top10": float(w[:10].sum() / tr),
        "eff_rank": float(tr**2 / np.sum(w**2)),
    }


def spectral_correlation(x: np.ndarray, t: np.ndarray, *, k: int = 100) -> dict[str, float]:
    """Pearson correlation of trace-normalised covariance spectra of ``X`` and ``T``.

    ``log``: on log-eigenvalues over all directions the smaller sample can support
    (``min(d, N−1)``; zero eigenvalues of a rank-deficient sample are not spectrum);
    ``linear``: on linear eigenvalues over the top ``k``.
    """
    x, t = _unit(x, "X"), _unit(t, "T")
    wx, _ = _cov_eigh(x)
    wt, _ = _cov_eigh(t)
    wx, wt = wx / wx.sum(), wt / wt.sum()
    m = min(x.shape[1], x.shape[0] - 1, t.shape[0] - 1)
    lx, lt = np.log(np.clip(wx[:m], 1e-300, None)), np.log(np.clip(wt[:m], 1e-300, None))
    kk = min(k, m)
    return {
        "log": float(np.corrcoef(lx, lt)[0, 1]),
        "linear": float(np.corrcoef(wx[:kk], wt[:kk])[0, 1]),
    }


def subspace_overlap(x: np.ndarray, t: np.ndarray, q: int = 10) -> dict[str, float]:
    """``‖U_xᵀ U_t‖²_F / q`` for the top-``q`` eigenvectors, with its random baseline ``q/d``."""
    x, t = _unit(x, "X"), _unit(t, "T")
    q = min(q, x.shape[1])
    _, vx = _cov_eigh(x)
    _, vt = _cov_eigh(t)
    overlap = float(np.sum((vx[:, :q].T @ vt[:, :q]) ** 2) / q)
    return {"overlap": overlap, "baseline": q / x.shape[1]}


# -- semantic preservation ------------------------------------------------------------------
def knn_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean ``|N_k^a(n) ∩ N_k^b(n)| / k``: neighbours of row n within set A vs within set B."""
    a, b = _unit(a, "A"), _unit(b, "B")
    if a.shape[0] != b.shape[0]:
        raise InputError(f"kNN overlap needs row-aligned sets: {a.shape[0]} vs {b.shape[0]} rows")
    return neighbour_overlap(knn_indices(a, a, k, exclude_self=True), b)


def pairwise_spearman(x: np.ndarray, s: np.ndarray, *, n_pairs: int = 200_000, seed: int = 0) -> float:
    """Spearman correlation of ``cos(x_a, x_b)`` and ``cos(s_a, s_b)`` over random pairs."""
    x, s = _unit(x, "X"), _unit(s, "S")
    n = x.shape[0]
    if n < 3:
        raise InputError("pairwise Spearman needs at least 3 rows")
    rng = np.random.default_rng(seed)
    if n * (n - 1) // 2 <= n_pairs:
        ia, ib = np.triu_indices(n, 1)
    else:
        ia = rng.integers(0, n, n_pairs)
        ib = (ia + rng.integers(1, n, n_pairs)) % n
    cx = np.einsum("ij,ij->i", x[ia], x[ib])
    cs = np.einsum("ij,ij->i", s[ia], s[ib])
    return float(stats.spearmanr(cx, cs).statistic)


# -- distribution compatibility -------------------------------------------------------------
def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.clip(np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2 * a @ b.T, 0.0, None)


def mmd2_rbf(s: np.ndarray, t: np.ndarray, *, scales: tuple[float, ...] = (0.5, 1.0, 2.0)) -> float:
    """Unbiased multi-scale RBF-MMD² (bandwidth = median pairwise distance of ``T`` × scales)."""
    s, t = _unit(s, "S"), _unit(t, "T")
    if s.shape[0] < 2 or t.shape[0] < 2:
        raise InputError("MMD² needs at least 2 rows per set")
    dss, dtt, dst = _sqdist(s, s), _sqdist(t, t), _sqdist(s, t)
    iu = np.triu_indices(t.shape[0], 1)
    bw = float(np.median(np.sqrt(dtt[iu]))) or 1.0
    m, n = s.shape[0], t.shape[0]
    total = 0.0
    for scale in scales:
        g = 1.0 / (2 * (bw * scale) ** 2)
        kss, ktt, kst = np.exp(-g * dss), np.exp(-g * dtt), np.exp(-g * dst)
        total += (kss.sum() - np.trace(kss)) / (m * (m - 1)) + (ktt.sum() - np.trace(ktt)) / (n * (n - 1))
        total -= 2 * kst.mean()
    return float(total / len(scales))


def knn_precision_recall(s: np.ndarray, t: np.ndarray, k: int = 5) -> dict[str, float]:
    """Kynkäänniemi et al. (2019) kNN precision (S inside T's support) and recall (T inside S's)."""
    s, t = _unit(s, "S"), _unit(t, "T")

    def _inside(query: np.ndarray, ref: np.ndarray) -> float:
        d_ref = np.sqrt(_sqdist(ref, ref))
        np.fill_diagonal(d_ref, np.inf)
        radius = np.sort(d_ref, axis=1)[:, min(k, ref.shape[0] - 1) - 1]
        d_q = np.sqrt(_sqdist(query, ref))
        return float(np.mean((d_q <= radius[None, :]).any(axis=1)))

    return {"precision": _inside(s, t), "recall": _inside(t, s)}


def _balanced(s: np.ndarray, t: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    m = min(s.shape[0], t.shape[0])
    rng = np.random.default_rng(seed)
    if s.shape[0] > m:
        s = s[np.sort(rng.choice(s.shape[0], m, replace=False))]
    if t.shape[0] > m:
        t = t[np.sort(rng.choice(t.shape[0], m, replace=False))]
    return s, t


def knn_mixing(s: np.ndarray, t: np.ndarray, k: int = 20, *, seed: int = 0) -> float:
    """Fraction of the ``k`` neighbours of each substitute in ``S ∪ T`` (equal sizes) that are real
    targets. 0.5 is perfect mixing; raw text gives ≈ 0."""
    s, t = _balanced(_unit(s, "S"), _unit(t, "T"), seed)
    pooled = np.concatenate([s, t])
    sim = s @ pooled.T
    # substitute i sits at pooled row i: it is not its own neighbour
    sim[np.arange(s.shape[0]), np.arange(s.shape[0])] = -np.inf
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return float(np.mean(idx >= s.shape[0]))


def domain_classifier_accuracy(
    s: np.ndarray, t: np.ndarray, *, k: int = 5, repeats: int = 5, seed: int = 0
) -> float:
    """Held-out accuracy of a kNN classifier telling ``S`` from ``T`` (0.5 = indistinguishable).

    Non-linear on purpose: after centroid calibration a linear probe sees no difference between
    methods (docs/diagnostics.md). Balanced classes; half of each class trains, half tests; averaged
    over ``repeats`` random splits. :func:`domain_classifier_by_class` gives the two per-class
    accuracies it averages.
    """
    return domain_classifier_by_class(s, t, k=k, repeats=repeats, seed=seed)["acc"]


def domain_classifier_by_class(
    s: np.ndarray, t: np.ndarray, *, k: int = 5, repeats: int = 5, seed: int = 0
) -> dict[str, float]:
    """:func:`domain_classifier_accuracy` (``acc``) with its accuracy on the substitutes (``acc_s``)
    and on the images (``acc_t``); ``acc = (acc_s + acc_t) / 2``.

    A low ``acc`` with very unequal halves is not indistinguishability: a set more concentrated
    than the other becomes the other's nearest neighbours (hubness), so one class is mostly
    misclassified while the other is recognised (docs/diagnostics.md).
    """
    s, t = _balanced(_unit(s, "S"), _unit(t, "T"), seed)
    m = s.shape[0]
    if m < 4:
        raise InputError("domain classifier needs at least 4 rows per set")
    x = np.concatenate([s, t])
    y = np.r_[np.zeros(m), np.ones(m)]
    rng = np.random.default_rng(seed)
    acc_s, acc_t = [], []
    for _ in range(repeats):
        train = np.zeros(2 * m, bool)
        for cls_rows in (np.arange(m), np.arange(m, 2 * m)):
            train[rng.permutation(cls_rows)[: m // 2]] = True
        xtr, ytr, xte, yte = x[train], y[train], x[~train], y[~train]
        nn = knn_indices(xte, xtr, k, exclude_self=False)
        hit = (ytr[nn].mean(axis=1) > 0.5).astype(float) == yte
        acc_s.append(np.mean(hit[yte == 0]))
        acc_t.append(np.mean(hit[yte == 1]))
    a_s, a_t = float(np.mean(acc_s)), float(np.mean(acc_t))
    return {"acc": (a_s + a_t) / 2, "acc_s": a_s, "acc_t": a_t}


# -- paired ---------------------------------------------------------------------------------
def paired_cosine(s: np.ndarray, t: np.ndarray) -> float:
    """Mean ``cos(S_n, T_n)`` over paired rows."""
    s, t = _unit(s, "S"), _unit(t, "T")
    return float(np.mean(np.einsum("ij,ij->i", s, t)))


def recall_at_k(s: np.ndarray, t: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Text→image retrieval: fraction of rows whose paired ``T_n`` ranks within the top k of ``S_n``.

    Rows of ``T`` may repeat (several captions per image); a hit on any identical copy counts.
    """
    s, t = _unit(s, "S"), _unit(t, "T")
    sim = s @ t.T
    target = np.einsum("ij,ij->i", s, t)
    # rank = number of images strictly more similar than the paired one
    rank = np.sum(sim > target[:, None] + 1e-12, axis=1)
    return {f"R@{k}": float(np.mean(rank < k)) for k in ks}


# -- one call -------------------------------------------------------------------------------
#: Column order of :func:`format_table`.
METRIC_ORDER = [
    "centroid_residual",
    "A_r", "A_r_baseline", "top5_energy",
    "spectral_corr_log", "spectral_corr_linear",
    "subspace_overlap@10", "subspace_overlap@10_baseline",
    "knn_overlap@10", "spearman",
    "mmd2", "knn_precision", "knn_recall", "knn_mixing", "domain_acc",
    "paired_cos", "R@1", "R@5", "knn_overlap_paired@10",
]


def diagnose(
    text: np.ndarray,
    image: np.ndarray,
    substitutes: np.ndarray | None = None,
    *,
    paired: bool = False,
    seed: int = 0,
    max_rows: int = 5000,
) -> dict[str, float]:
    """Every diagnostic of docs/diagnostics.md for one method, as a flat ``{metric: value}`` dict.

    Parameters
    ----------
    text, image
        Source text ``X`` and image ``T`` embeddings (any float dtype; normalised here).
    substitutes
        The method's output ``S`` for ``text`` (row-aligned); ``None`` evaluates the raw text.
    paired
        Rows of ``text`` and ``image`` are pairs: adds ``A_r``, paired cosine, R@1/R@5 and kNN
        overlap with the paired images.
    seed
        Seed for sub-sampling (sets larger than ``max_rows``) and the classifier's splits.
    """
    x = _unit(text, "text")
    t = _unit(image, "image")
    s = x if substitutes is None else _unit(substitutes, "substitutes")
    if s.shape != x.shape:
        raise InputError(f"substitutes {s.shape} must be row-aligned with text {x.shape}")
    if paired and x.shape != t.shape:
        raise InputError(f"paired diagnostics need equal shapes: text {x.shape} vs image {t.shape}")
    out: dict[str, float] = {"centroid_residual": centroid_residual(s, t)}  # on all rows
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_rows:
        rows = np.sort(rng.choice(x.shape[0], max_rows, replace=False))
        x, s = x[rows], s[rows]
        if paired:
            t = t[rows]
    if t.shape[0] > max_rows:
        t = t[np.sort(rng.choice(t.shape[0], max_rows, replace=False))]
    if paired:
        ra = residual_anisotropy(s, t)
        out.update({"A_r": ra["A_r"], "A_r_baseline": ra["A_r_baseline"], "top5_energy": ra["top5"]})
    sc = spectral_correlation(x, t)
    so = subspace_overlap(x, t, 10)
    out.update({
        "spectral_corr_log": sc["log"],
        "spectral_corr_linear": sc["linear"],
        "subspace_overlap@10": so["overlap"],
        "subspace_overlap@10_baseline": so["baseline"],
        "knn_overlap@10": knn_overlap(x, s, 10),
        "spearman": pairwise_spearman(x, s, seed=seed),
        "mmd2": mmd2_rbf(s, t),
    })
    pr = knn_precision_recall(s, t)
    out.update({
        "knn_precision": pr["precision"],
        "knn_recall": pr["recall"],
        "knn_mixing": knn_mixing(s, t, seed=seed),
        "domain_acc": domain_classifier_accuracy(s, t, seed=seed),
    })
    if paired:
        out["paired_cos"] = paired_cosine(s, t)
        out.update(recall_at_k(s, t))
        out["knn_overlap_paired@10"] = knn_overlap(s, t, 10)
    logger.debug("diagnostics: %s", out)
    return out


def format_table(rows: dict[str, dict[str, float]], *, digits: int = 3) -> str:
    """Render ``{method: {metric: value}}`` as one markdown table (metrics in :data:`METRIC_ORDER`,
    then any others, in first-seen order)."""
    if not rows:
        return ""
    cols: list[str] = [m for m in METRIC_ORDER if any(m in r for r in rows.values())]
    for r in rows.values():
        cols += [m for m in r if m not in cols]

    def fmt(v: float | None) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        v = float(v)
        if v != 0 and (abs(v) < 10 ** (-digits) or abs(v) >= 1e4):
            return f"{v:.{max(digits - 1, 1)}e}"
        return f"{v:.{digits}f}"

    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)
