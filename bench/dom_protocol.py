"""How ``dom`` (the kNN domain classifier) depends on its protocol, on COCO-500, for the same
out-of-sample substitutes (5 folds of ``bench/quality.py``).

Protocols: ``quality`` is the one ``bench/quality.py`` reports (per fold 100 substitutes vs the
fold's 100 images, each class split in half at random, k = 5, 20 splits); ``k1`` / ``k10`` change
k; ``disjoint`` draws substitutes and images from different items (no pair can leak across the
split; half the rows per class); ``pooled`` concatenates the five held-out folds (500 vs 500).
Also the per-class accuracies (on substitutes / on images) of the ``quality`` protocol.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/dom_protocol.py [--set COCO-500]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _env  # noqa: E402,F401 - before numpy: one BLAS thread (bench/_env.py)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import DOM_REPEATS, load_sets, make_folds  # noqa: E402

from aniso.numeric.arrays import l2_normalize  # noqa: E402
from aniso.quality.diagnostics import domain_classifier_by_class, knn_indices  # noqa: E402
from aniso.methods import get_aligner  # noqa: E402

METHODS = {"centroid shift": ("centroid", {}), "ReAlign": ("realign", {}),
           "MomentMatch shrink 0.9": ("moment", {"shrinkage": 0.9}), "AnisoAlign": ("anisoalign", {}),
           "AnisoAlign, no bounds": ("anisoalign", {"bounded": False})}


def disjoint(s: np.ndarray, im: np.ndarray, k: int, repeats: int, seed: int) -> float:
    """Substitutes of one half of the items against images of the other half."""
    m = s.shape[0]
    rng = np.random.default_rng(seed)
    acc = []
    for _ in range(repeats):
        p = rng.permutation(m)
        a, b = s[p[: m // 2]], im[p[m // 2:]]
        n = a.shape[0] // 2
        xtr, ytr = np.concatenate([a[:n], b[:n]]), np.r_[np.zeros(n), np.ones(n)]
        xte, yte = np.concatenate([a[n:], b[n:]]), np.r_[np.zeros(a.shape[0] - n), np.ones(b.shape[0] - n)]
        nn = knn_indices(xte, xtr, k, exclude_self=False)
        acc.append(np.mean((ytr[nn].mean(1) > 0.5) == yte))
    return float(np.mean(acc))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="COCO-500")
    args = ap.parse_args()
    text, image, _ = load_sets()[0][args.set]
    text, image = l2_normalize(text.astype(np.float64)), l2_normalize(image.astype(np.float64))
    folds = make_folds(image, 5, 0)
    cols = ["quality", "on S / on T", "k1", "k10", "disjoint", "disjoint k10", "pooled"]
    print("| method | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 1) + "|")
    for label, (name, params) in METHODS.items():
        res: dict[str, list[float]] = {}
        pooled = np.zeros_like(text)
        for k, test in enumerate(folds):
            train = np.setdiff1d(np.arange(text.shape[0]), test)
            s = get_aligner(name, **params).fit(text[train], image[train]).transform(text[test]).astype(np.float64)
            pooled[test] = s
            q = domain_classifier_by_class(s, image[test], repeats=DOM_REPEATS, seed=k)
            for key, v in (("quality", q["acc"]), ("S", q["acc_s"]), ("T", q["acc_t"]),
                           ("k1", domain_classifier_by_class(s, image[test], k=1, repeats=DOM_REPEATS, seed=k)["acc"]),
                           ("k10", domain_classifier_by_class(s, image[test], k=10, repeats=DOM_REPEATS, seed=k)["acc"]),
                           ("disjoint", disjoint(s, image[test], 5, DOM_REPEATS, k)),
                           ("disjoint k10", disjoint(s, image[test], 10, DOM_REPEATS, k))):
                res.setdefault(key, []).append(v)
        res["pooled"] = [domain_classifier_by_class(pooled, image, repeats=DOM_REPEATS, seed=0)["acc"]]
        m = {key: float(np.mean(v)) for key, v in res.items()}
        print(f"| {label} | {m['quality']:.3f} | {m['S']:.2f} / {m['T']:.2f} | {m['k1']:.3f} | {m['k10']:.3f} | "
              f"{m['disjoint']:.3f} | {m['disjoint k10']:.3f} | {m['pooled']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
