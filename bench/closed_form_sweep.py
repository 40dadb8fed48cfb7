"""Fast sweep of closed-form variants on the small real sets (same folds and metrics as
``bench/quality.py``): which per-direction correction gives the lowest ``dom`` without giving up
``knn`` / ``r1``?

Each variant is a linear map ``y = normalize(μ_i + (x − μ_t) Aᵀ)`` fitted from the training fold's
moments (rows used unpaired), followed by the exact centroid calibration of AnisoAlign (Newton
steps on the training text). Baselines are the shipped aligners. Prints one table per set and the
dominance verdict of each variant against every shipped baseline.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/closed_form_sweep.py [--sets COCO-500,...] \
        [--variants REGEX] [--folds 5] [--seed 0] [--big]

The shipped baselines are always scored; ``--variants`` picks the rest by regular expression
(one set and a few variants run in 10–40 s; everything on every set takes several minutes).
``--big`` adds the planted-gap 50k set and the demo world (``bench/demo_world.py``, cached).
Figures quoted in ``docs/quality.md`` ("Why the default does not dominate every baseline") come
from the variants ``OT^a ps7``, ``CORAL0.9 blend b radial``, ``shift+radial``, ``shift+calib`` and
the nonlinear families ``entropic map``, ``entropic smooth`` and ``radial quantile``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import _env  # noqa: E402,F401 - before numpy: one BLAS thread (bench/_env.py)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import BASELINES, DOM_REPEATS, load_sets, make_folds  # noqa: E402

from aniso.numeric.arrays import l2_normalize  # noqa: E402
from aniso.methods.anisoalign.closed_form import centroid_offset, fit_closed_form, ot_log_scales, radial_scale  # noqa: E402
from aniso.quality.diagnostics import domain_classifier_accuracy, knn_indices, knn_overlap, recall_at_k  # noqa: E402
from aniso.methods import get_aligner  # noqa: E402
from aniso.numeric.moments import Moments  # noqa: E402

Transform = Callable[[np.ndarray], np.ndarray]
Fitter = Callable[[np.ndarray, np.ndarray], Transform]


def moments(x: np.ndarray) -> Moments:
    return Moments.from_chunk(x)


def calibrated(premap: Callable[[np.ndarray], np.ndarray], text: np.ndarray, mu_i: np.ndarray) -> Transform:
    """Exact centroid calibration of ``premap`` on the training text (AnisoAlign's Newton steps)."""
    c, _, _ = centroid_offset(premap(text), mu_i)
    return lambda x: l2_normalize(premap(x) + c)


def linear(make_a: Callable[[Moments, Moments], np.ndarray], scale: bool = False) -> Fitter:
    """A fitter from a function of the two modalities' moments to the matrix ``A``; ``scale``:
    calibrate the deviations' overall scale radially first (the Newton shift then only fixes the
    direction)."""

    def fit(text: np.ndarray, image: np.ndarray) -> Transform:
        mt, mi = moments(text), moments(image)
        a = make_a(mt, mi)
        mu_t, mu_i = np.asarray(mt.mean), np.asarray(mi.mean)
        if scale:
            a = a * radial_scale((text - mu_t) @ a.T, mu_i)
        return calibrated(lambda x: l2_normalize(mu_i + (x - mu_t) @ a.T), text, mu_i)

    return fit


def aligner(name: str, **params) -> Fitter:
    def fit(text: np.ndarray, image: np.ndarray) -> Transform:
        a = get_aligner(name, **params).fit(text, image)
        return lambda x: a.transform(x).astype(np.float64)

    return fit


# -- building blocks for A ------------------------------------------------------------------
def shrink(m: Moments, n0: float) -> np.ndarray:
    c, d = m.covariance(), m.dim
    out = c * (m.n / (m.n + n0))
    out[np.diag_indices(d)] += np.trace(c) / d * n0 / (m.n + n0)
    return out


def ot_geodesic(alpha: float, ps: float = 7.0, mode: str = "all") -> Callable[[Moments, Moments], np.ndarray]:
    """``A = T^α`` of the shrunk Gaussian OT map (``mode``: all / up (inflate only) / down)."""

    def make(mt: Moments, mi: Moments) -> np.ndarray:
        g, q = ot_log_scales(shrink(mt, ps * mt.dim), shrink(mi, ps * mi.dim))
        if mode == "up":
            g = np.maximum(g, 0)
        elif mode == "down":
            g = np.minimum(g, 0)
        return (q * np.exp(alpha * g)) @ q.T

    return make


def diag_basis(alpha: float, basis: str, ps: float = 7.0) -> Callable[[Moments, Moments], np.ndarray]:
    """Per-direction rescale in the text / image PCA basis: ``s_j = (v_i,j / v_t,j)^{α/2}``."""

    def make(mt: Moments, mi: Moments) -> np.ndarray:
        st, si = shrink(mt, ps * mt.dim), shrink(mi, ps * mi.dim)
        _, q = np.linalg.eigh(st if basis == "text" else si)
        vt = np.einsum("ij,jk,ki->i", q.T, st, q)
        vi = np.einsum("ij,jk,ki->i", q.T, si, q)
        return (q * (vi / vt) ** (alpha / 2)) @ q.T

    return make


def budgeted(budget: float, ps: float = 7.0, rows: int = 0) -> Fitter:
    """The largest ``α`` (grid of 0.05) whose in-sample kNN-overlap loss on the training text,
    against ``α = 0``, is at most ``budget``; ``rows`` > 0 scores random subsets of that size."""

    def fit(text: np.ndarray, image: np.ndarray) -> Transform:
        mt, mi = moments(text), moments(image)
        mu_t, mu_i = np.asarray(mt.mean), np.asarray(mi.mean)
        g, q = ot_log_scales(shrink(mt, ps * mt.dim), shrink(mi, ps * mi.dim))
        dev0 = text - mu_t
        rng = np.random.default_rng(0)
        n = text.shape[0]
        subsets = ([np.arange(n)] if n <= 2000 else [np.sort(rng.choice(n, 2000, replace=False))]) if not rows else [
            np.sort(rng.choice(n, min(rows, n), replace=False)) for _ in range(8)]

        def premap_of(alpha: float) -> np.ndarray:
            a = (q * np.exp(alpha * g)) @ q.T
            return a * radial_scale(dev0 @ a.T, mu_i)

        def knn_of(a: np.ndarray) -> float:
            y = l2_normalize(mu_i + dev0 @ a.T)
            return float(np.mean([knn_overlap(text[r], y[r], 10) for r in subsets]))

        base = knn_of(premap_of(0.0))
        best = premap_of(0.0)
        for alpha in np.arange(0.05, 1.0001, 0.05):
            a = premap_of(alpha)
            if base - knn_of(a) > budget:
                break
            best = a
        return calibrated(lambda x: l2_normalize(mu_i + (x - mu_t) @ best.T), text, mu_i)

    return fit


def coral_blend(beta: float, shrinkage: float) -> Callable[[Moments, Moments], np.ndarray]:
    """``A = β W + (1 − β) I`` with ``W`` the shrunk whitening–colouring (CORAL) matrix."""

    def make(mt: Moments, mi: Moments) -> np.ndarray:
        d = mt.dim
        st, si = mt.covariance(), mi.covariance()
        st = (1 - shrinkage) * st + shrinkage * np.trace(st) / d * np.eye(d)
        si = (1 - shrinkage) * si + shrinkage * np.trace(si) / d * np.eye(d)
        wt, vt = np.linalg.eigh(st)
        wi, vi = np.linalg.eigh(si)
        w = (vi * np.sqrt(np.clip(wi, 0, None))) @ vi.T @ (vt / np.sqrt(np.clip(wt, 1e-12, None))) @ vt.T
        return beta * w + (1 - beta) * np.eye(d)

    return make


# -- nonlinear: the entropic OT map (Pooladian & Niles-Weed's estimator) ----------------------
def entropic_map(lam: float, eps_rel: float, smooth_k: int = 0, anchors: int = 2000) -> Fitter:
    """Move the shifted text ``λ`` of the way to its entropic-OT barycentric image among the training
    images (uniform weights, cost ``½‖x − y‖²``, ``ε = eps_rel ×`` the median cost, log-domain
    Sinkhorn on at most ``anchors`` rows of each modality). ``smooth_k`` > 0: a new row moves by the
    mean displacement of its ``k`` nearest training texts (a smoother field), instead of by its own
    entropic image."""

    def fit(text: np.ndarray, image: np.ndarray) -> Transform:
        from scipy.special import logsumexp

        mu_t, mu_i = text.mean(0), image.mean(0)
        rng = np.random.default_rng(0)
        tx = text if text.shape[0] <= anchors else text[np.sort(rng.choice(text.shape[0], anchors, replace=False))]
        im = image if image.shape[0] <= anchors else image[np.sort(rng.choice(image.shape[0], anchors, replace=False))]

        def cost(x: np.ndarray) -> np.ndarray:
            return 0.5 * ((x * x).sum(1)[:, None] + (im * im).sum(1)[None, :] - 2 * x @ im.T)

        xs = tx - mu_t + mu_i
        c = cost(xs)
        eps = eps_rel * float(np.median(c))
        f, g = np.zeros(c.shape[0]), np.zeros(c.shape[1])
        for _ in range(300):
            f = -eps * logsumexp((g[None, :] - c) / eps, axis=1, b=1.0 / c.shape[1])
            g = -eps * logsumexp((f[:, None] - c) / eps, axis=0, b=1.0 / c.shape[0])

        def barycentre(x: np.ndarray) -> np.ndarray:
            z = (g[None, :] - cost(x)) / eps
            w = np.exp(z - z.max(1, keepdims=True))
            return (w / w.sum(1, keepdims=True)) @ im

        disp = barycentre(xs) - xs

        def premap(x: np.ndarray) -> np.ndarray:
            shifted = x - mu_t + mu_i
            if not smooth_k:
                return shifted + lam * (barycentre(shifted) - shifted)
            nearest = knn_indices(x, tx, smooth_k, exclude_self=False)
            return shifted + lam * disp[nearest].mean(1)

        return calibrated(premap, text, mu_i)

    return fit


def radial_quantile(base: Fitter, strength: float) -> Fitter:
    """``base`` followed by a 1-D monotone transport of each substitute's cosine to the image mean
    direction onto the images' distribution of it (quantile matching, ``strength`` of the way; the
    tangent direction is kept), then the exact calibration: matches the radial spread a kNN
    domain classifier can read, without touching the directions around the mean."""

    def fit(text: np.ndarray, image: np.ndarray) -> Transform:
        mapped, mu_i = base(text, image), image.mean(0)
        u = mu_i / np.linalg.norm(mu_i)
        c_img, c_sub = np.sort(image @ u), np.sort(mapped(text) @ u)

        def premap(x: np.ndarray) -> np.ndarray:
            y = mapped(x)
            c = y @ u
            q = np.interp(c, c_sub, np.linspace(0, 1, c_sub.size))
            c2 = c + strength * (np.interp(q, np.linspace(0, 1, c_img.size), c_img) - c)
            tangent = l2_normalize(y - c[:, None] * u)
            return c2[:, None] * u + np.sqrt(np.clip(1 - c2 ** 2, 0, None))[:, None] * tangent

        return calibrated(premap, text, mu_i)

    return fit


def current(**kw) -> Callable[[Moments, Moments], np.ndarray]:
    return lambda mt, mi: fit_closed_form(mt, mi, **kw).A


def capped(gain: float, up: float, down: float, ps: float = 7.0, lift: str = "down") -> Callable[[Moments, Moments], np.ndarray]:
    """``h = clip(γ_N · w · g, −cap_down, cap_up)`` with evidence-lifted caps on the ``lift`` side only."""

    def make(mt: Moments, mi: Moments) -> np.ndarray:
        from aniso.methods.anisoalign.closed_form import noise_spread

        d = mt.dim
        g, q = ot_log_scales(shrink(mt, ps * d), shrink(mi, ps * d))
        n = 2.0 / (1.0 / mt.n + 1.0 / mi.n)
        gam = gain * n / (n + d)
        w = g * g / (g * g + 0.5 * (1.0 / mt.n + 1.0 / mi.n))
        excess = np.maximum(np.abs(g) - noise_spread(mt.n, mi.n, d), 0)
        cu = np.maximum(up, excess) if lift in ("up", "both") else np.full_like(g, up)
        cd = np.maximum(down, excess) if lift in ("down", "both") else np.full_like(g, down)
        h = np.clip(gam * w * g, -cd, cu)
        return (q * np.exp(h)) @ q.T

    return make


def variants() -> dict[str, Fitter]:
    v: dict[str, Fitter] = {
        "centroid shift": aligner("centroid"),
        "C3 (b), no noise": aligner("c3", noise=0.0),
        "ReAlign": aligner("realign"),
        "MomentMatch (CORAL)": aligner("moment"),
        "MomentMatch shrink 0.9": aligner("moment", shrinkage=0.9),
        "AnisoAlign (shipped)": aligner("anisoalign"),
        "shift+calib": linear(lambda mt, mi: np.eye(mt.dim)),
        "AnisoAlign, no kNN budget": aligner("anisoalign", knn_budget=None),
        "AnisoAlign, no kNN budget, no radial": aligner("anisoalign", knn_budget=None, radial=False),
        "AnisoAlign, no radial": aligner("anisoalign", radial=False),
    }
    for b in (0.015, 0.02, 0.03):
        v[f"AnisoAlign budget {b}"] = aligner("anisoalign", knn_budget=b)
    for a in (0.25, 0.5, 0.75, 1.0):
        for ps in (1.0, 7.0):
            v[f"OT^{a} ps{ps:g}"] = linear(ot_geodesic(a, ps))
    for a in (0.5, 1.0):
        v[f"OT^{a} up"] = linear(ot_geodesic(a, 7.0, "up"))
        v[f"OT^{a} down"] = linear(ot_geodesic(a, 7.0, "down"))
        v[f"text-basis^{a}"] = linear(diag_basis(a, "text"))
        v[f"image-basis^{a}"] = linear(diag_basis(a, "image"))
    for b in (0.5, 1.0):
        v[f"current bound {b}"] = linear(current(bound=b))
    v["shift+radial"] = linear(lambda mt, mi: np.eye(mt.dim), scale=True)
    for a in (0.25, 0.5, 0.75, 1.0):
        v[f"OT^{a} ps7 radial"] = linear(ot_geodesic(a, 7.0), scale=True)
        v[f"OT^{a} ps3 radial"] = linear(ot_geodesic(a, 3.0), scale=True)
    v["current radial"] = linear(current(), scale=True)
    for beta in (0.3, 0.5, 1.0):
        for sh in (0.5, 0.9):
            v[f"CORAL{sh} blend {beta} radial"] = linear(coral_blend(beta, sh), scale=True)
    for b in (0.005, 0.01, 0.02):
        v[f"budget {b}"] = budgeted(b)
        v[f"budget {b} on 100"] = budgeted(b, rows=100)
    for up in (0.1, 0.3):
        for down in (0.3, 0.6, 1.0):
            for lift in ("down", "none"):
                v[f"cap up{up} down{down} lift-{lift}"] = linear(capped(1.0, up, down, lift=lift))
    for lam in (0.3, 0.5, 0.7):
        for eps in (0.05, 0.2):
            v[f"entropic map {lam} eps{eps}"] = entropic_map(lam, eps)
    for lam in (0.25, 0.5, 1.0):
        for k in (10, 30):
            v[f"entropic smooth {lam} k{k}"] = entropic_map(lam, 0.05, smooth_k=k)
    for st in (0.5, 1.0):
        v[f"radial quantile {st}"] = radial_quantile(aligner("anisoalign"), st)
        v[f"shift+radial quantile {st}"] = radial_quantile(aligner("centroid"), st)
    return v


def score(text: np.ndarray, image: np.ndarray, fitters: dict[str, Fitter], n_folds: int, seed: int,
          eval_rows: int = 0) -> dict[str, dict[str, list[float]]]:
    text, image = l2_normalize(text.astype(np.float64)), l2_normalize(image.astype(np.float64))
    out: dict[str, dict[str, list[float]]] = {}
    for k, test in enumerate(make_folds(image, n_folds, seed)):
        train = np.setdiff1d(np.arange(text.shape[0]), test)
        if eval_rows and test.size > eval_rows:
            test = np.sort(np.random.default_rng([seed, k]).choice(test, eval_rows, replace=False))
        for label, fit in fitters.items():
            subs = fit(text[train], image[train])(text[test])
            r = out.setdefault(label, {"dom": [], "knn": [], "r1": []})
            r["dom"].append(domain_classifier_accuracy(subs, image[test], repeats=DOM_REPEATS, seed=seed + k))
            r["knn"].append(knn_overlap(text[test], subs, 10))
            r["r1"].append(recall_at_k(subs, image[test], ks=(1,))["R@1"])
    return out


def dominated_by(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["dom"] < b["dom"] and a["knn"] >= b["knn"] - 0.01 and a["r1"] >= b["r1"] - 0.01


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="")
    ap.add_argument("--variants", default="")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--big", action="store_true", help="add the planted-gap 50k set (2000 rows scored per fold)")
    args = ap.parse_args()
    sets, _ = load_sets()
    if args.big:
        from aniso.testing.synthetic import planted_gap

        g = planted_gap(n=50_000, d=64, seed=args.seed)
        sets["planted gap 50k"] = (g.text, g.image, "")
        from demo_world import demo_world

        sets["demo world"] = (*demo_world(60_000), "")
    if args.sets:
        sets = {k: v for k, v in sets.items() if k in args.sets.split(",")}
    fitters = variants()
    if args.variants:
        fitters = {k: f for k, f in fitters.items() if k in BASELINES or re.search(args.variants, k)}
    wins: dict[str, int] = {k: 0 for k in fitters if k not in BASELINES}
    for name, (text, image, _) in sets.items():
        t0 = time.perf_counter()
        res = score(text, image, fitters, args.folds, args.seed, eval_rows=2000 if text.shape[0] > 5000 else 0)
        mean = {k: {m: float(np.mean(v)) for m, v in r.items()} for k, r in res.items()}
        print(f"\n## {name} ({time.perf_counter() - t0:.0f} s)\n\n| variant | dom | knn | r1 | dominates all |\n|---|---|---|---|---|")
        for label, r in mean.items():
            sd = {m: float(np.std(v)) for m, v in res[label].items()}
            ok = "" if label in BASELINES else ("yes" if all(dominated_by(r, mean[b]) for b in BASELINES) else
                                                "no: " + ",".join(b.split()[0] + (b.split()[-1] if "shrink" in b else "")
                                                                  for b in BASELINES if not dominated_by(r, mean[b])))
            if ok == "yes":
                wins[label] += 1
            print(f"| {label} | {r['dom']:.3f} ± {sd['dom']:.3f} | {r['knn']:.3f} | {r['r1']:.3f} | {ok} |", flush=True)
    print("\n| variant | sets dominated |\n|---|---|")
    for label, w in sorted(wins.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {w}/{len(sets)} |")


if __name__ == "__main__":
    main()
