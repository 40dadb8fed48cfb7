"""Quality table: every method, every diagnostic, k-fold out of sample on every paired set.

Fit on (k−1)/k of the rows (used *unpaired*), evaluate on the held-out fold (pairs used only for
the paired metrics). Same folds for every method. Sets:

* the real paired sets in ``../shared/data`` (read in place; a set whose files are absent is
  skipped and the page says so);
* the demo world (``bench/demo_world.py``: ≥ 60,000 captioned scenes embedded by the shipped
  ``aniso-demo-tiny`` open_clip model; cached under ``.cache/``);
* a planted-gap set (:func:`aniso.testing.synthetic.planted_gap`) at 50,000 pairs.

On the large sets the metrics are computed on a seeded sample of ``--eval-rows`` held-out rows
per fold. Writes ``docs/quality.md``, keeping its "Downstream" and "Caption decoder" sections
(``bench/transfer.py``, ``bench/caption.py``) and the record of AnisoAlign's removed learned stages
("Why the learned stages lose") at the top.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/quality.py [--folds 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import _env  # noqa: E402,F401 - before numpy: one BLAS thread (bench/_env.py)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from aniso.numeric.arrays import l2_normalize  # noqa: E402
from aniso.quality.diagnostics import (centroid_residual, diagnose,  # noqa: E402
                                       domain_classifier_by_class, format_table)
from aniso.methods import get_aligner  # noqa: E402

DATA = ROOT.parent / "shared" / "data"

METHODS: dict[str, tuple[str, dict]] = {
    "raw text": ("identity", {}),
    "centroid shift": ("centroid", {}),
    "C3 (b), no noise": ("c3", {"noise": 0.0}),
    "ReAlign": ("realign", {}),
    "MomentMatch (CORAL)": ("moment", {}),
    "MomentMatch shrink 0.9": ("moment", {"shrinkage": 0.9}),
    "AnisoAlign": ("anisoalign", {}),
    "AnisoAlign, closed form": ("anisoalign", {"match_rows": 0}),  # the default before the matched refinement
    "AnisoAlign, knn_budget 0.01": ("anisoalign", {"knn_budget": 0.01}),  # the default before issue 23
    "AnisoAlign, no bounds": ("anisoalign", {"bounded": False, "match_rows": 0}),
}
#: the shipped baselines AnisoAlign's default has to dominate
BASELINES = ["centroid shift", "C3 (b), no noise", "ReAlign", "MomentMatch (CORAL)", "MomentMatch shrink 0.9"]
KEY = [("domain_acc", "dom"), ("knn_overlap@10", "knn"), ("R@1", "r1"), ("insample_centroid_residual", "in-sample centroid"),
       ("dom_s", "dom on S / on T")]
SUMMARY = ["domain_acc", "mmd2", "knn_mixing", "knn_precision", "knn_overlap@10", "spearman", "R@1", "R@5",
           "paired_cos", "knn_overlap_paired@10", "centroid_residual", "insample_centroid_residual"]
DOM_REPEATS = 20

#: What the tables below show (figures of the sweeps named, same folds and metrics).
FINDINGS = [
    "### Why the default does not dominate every baseline",
    "",
    "The findings below were measured when the default was `knn_budget: 0.01` (its rows were labelled `AnisoAlign`, "
    "and `knn_budget: null` was `AnisoAlign, no kNN budget`). Since issue 23 the default is chosen by downstream "
    "transfer (the Downstream section above): first `knn_budget: null`, now the matched refinement on top of it "
    "(`AnisoAlign`; `AnisoAlign, closed form` is `match_rows: 0`). It turns the text's directions, so it keeps "
    "less of the text's neighbourhoods (`knn`) than the closed form while transferring better; these proxies "
    "are diagnostics, not targets.",
    "",
    "* **Shrunk CORAL (MomentMatch shrink 0.9)** has the lowest `dom` of the baselines on six of the seven small "
    "real sets (plain CORAL on ConVIRT-500), at a kNN overlap "
    "0.02–0.28 below the shift's. Dominating it needs `dom` below its value with `knn` within 0.01 of the shift's. "
    "No linear map we found does that: on COCO-500 every family lies on one frontier "
    "(`bench/closed_form_sweep.py`): the OT geodesic `A = T^α` gives dom/knn 0.812/0.903, 0.752/0.890, "
    "0.688/0.860, 0.637/0.827 for α = ¼, ½, ¾, 1; shrunk CORAL blended into the shift and calibrated 0.810/0.901, "
    "0.772/0.887, 0.656/0.816; rescaling in the text or image PCA basis, inflating or deflating only, and "
    "capping inflation all fall on or behind it. Reaching dom 0.694 costs about 0.05 of kNN overlap.",
    "* Part of the low `dom` of the uncalibrated baselines is a spread mismatch, not similarity: read the halves "
    "`dom on S / on T` (shrink 0.9 on CLASP-99: 0.99 / 0.17; the shift on VideoCLIP-100: 0.08 / 1.00 and on "
    "ConVIRT-500: 0.56 / 1.00) and docs/diagnostics.md.",
    "* **The exact calibration costs `dom` where the centroid shift leaves a large in-sample residual** "
    "(ConVIRT-500 0.19, VideoCLIP-100 0.07, CLASP-99 0.06): the shift followed by the exact calibration scores "
    "0.845 / 0.578 / 0.676 there against the uncalibrated shift's 0.780 / 0.541 / 0.631 (sweep rows "
    "`shift+radial`). The target asks for both an in-sample residual ≤ 1e-3 and a `dom` below the uncalibrated "
    "shift's; on those three sets the calibration alone is further from that `dom` than any correction we found "
    "can win back within the kNN tolerance.",
    "* **Nonlinear maps lie on the same frontier.** The entropic optimal-transport map (each shifted text row moved "
    "`λ` of the way to its entropic barycentre among the training images, the out-of-sample estimator of "
    "Pooladian & Niles-Weed) and a smoothed version (a new row moves by the mean displacement of its k nearest "
    "training texts) give on COCO-500 dom/knn/r1 0.785/0.845/0.506 (λ 0.3, ε 0.05), 0.783/0.892/0.528 (smoothed, "
    "λ 0.25, k 10: the default's point), 0.687/0.846/0.544 (smoothed, λ 0.5, k 10: the linear `T^¾` point "
    "0.688/0.860 at a lower knn); on none of the seven small real sets does any of their twelve settings dominate "
    "every baseline (`bench/closed_form_sweep.py --variants entropic`). Matching the substitutes' radial spread to "
    "the images' (a 1-D quantile transport of each row's cosine to the image mean direction after the default, "
    "`radial quantile 0.5`) moves `dom` by at most 0.013 (CLASP-99, lower; COCO-500 0.789), raises the kNN overlap "
    "on five sets (COCO-500 0.907) and lowers it on ConVIRT-500 (0.881): again no set dominated. Why the frontier is hard: the images' own "
    "neighbourhoods share only 0.40 of the text's (COCO-500, `knn_overlap_paired@10` of the raw text), so a set "
    "that keeps 0.89 of the text's neighbourhoods cannot have the images' local structure, which is what a kNN "
    "domain classifier reads; the image-specific variation is not a function of the text.",
    "* **The kNN budget** keeps the default's kNN overlap, as applied (radially scaled and calibrated), within 0.01 "
    "of the plain shift's on the fitting text. Out of sample it held on six of the seven small real sets (CLASP-99, "
    "79 fitting rows in 768-d: 0.018 below) and on both large sets. It is why the default dominates the shift, C3 "
    "and ReAlign where it does, and it removes the planted-50k over-correction (`dom` 0.469 → 0.814, kNN overlap "
    "0.412 → 0.846): there the budget allows almost no correction, and what is left is the calibrated shift, whose "
    "calibration costs `dom` (0.814 against the uncalibrated shift's 0.808). An earlier budget measured against "
    "the radially scaled, uncalibrated shift let the default pay 0.017 of kNN overlap there for `dom` 0.803. On "
    "the demo world the budget also allows almost no correction (`dom` ≈ 1), while `knn_budget=None` reaches `dom` "
    "0.64 at a kNN overlap 0.11 lower. That setting is the one to use when matching the image distribution "
    "matters more than keeping the text's neighbourhoods.",
    "",
]


def load_sets() -> tuple[dict[str, tuple[np.ndarray, np.ndarray, str]], list[str]]:
    """Real sets: name -> (text, image, description), and the reasons for any skipped."""
    sets, skipped = {}, []
    gap = DATA / "mind-the-gap-coco500"
    for fname, name, desc in (("features_clip.npy", "COCO-500", "CLIP ViT-B/16, 500 pairs, d=512"),
                              ("features_convirt.npy", "ConVIRT-500", "ConVIRT chest X-ray/report, 500 pairs, d=512"),
                              ("features_videoclip.npy", "VideoCLIP-100", "VideoCLIP MSR-VTT, 100 pairs, d=768"),
                              ("features_clasp.npy", "CLASP-99", "CLASP protein/text, 99 pairs, d=768")):
        if (gap / fname).exists():
            a = np.load(gap / fname)
            sets[name] = (a[1], a[0], desc)
        else:
            skipped.append(f"{name}: {gap / fname} absent")
    flickr = DATA / "flickr8k-clip-vitb32"
    if flickr.exists():
        sets["Flickr8k-500"] = (np.load(flickr / "text_embeddings.npy"), np.load(flickr / "image_embeddings.npy"),
                                "CLIP ViT-B/32, 500 captions (100 images × 5), d=512")
    else:
        skipped.append(f"Flickr8k-500: {flickr} absent")
    for name, desc in (("fashion-fashionclip", "FashionCLIP"), ("fashion-marqo-fashionclip", "Marqo-FashionCLIP, raw → L2")):
        base = DATA / name
        if base.exists():
            t, i = np.load(base / "text_embeddings.npy"), np.load(base / "image_embeddings.npy")
            sets[name] = (t, i, f"{desc}, {t.shape[0]} pairs, d={t.shape[1]}")
        else:
            skipped.append(f"{name}: {base} absent")
    return sets, skipped


def make_folds(image: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Row folds grouped by identical image rows (Flickr repeats each image for 5 captions), so
    a held-out fold never shares an image with its training part."""
    _, group = np.unique(np.round(image.astype(np.float64), 6), axis=0, return_inverse=True)
    group = group.ravel()
    groups = np.random.default_rng(seed).permutation(group.max() + 1)
    parts = np.array_split(groups, n_folds)
    return [np.flatnonzero(np.isin(group, p)) for p in parts]


def evaluate(text: np.ndarray, image: np.ndarray, n_folds: int, seed: int, *, eval_rows: int = 0,
             methods: dict[str, tuple[str, dict]] = METHODS) -> tuple[dict, dict]:
    """Per method: mean and std over folds of every metric."""
    text, image = l2_normalize(text.astype(np.float64)), l2_normalize(image.astype(np.float64))
    folds = make_folds(image, n_folds, seed)
    rows: dict[str, dict[str, list[float]]] = {}
    for k, test in enumerate(folds):
        train = np.setdiff1d(np.arange(text.shape[0]), test)
        rng = np.random.default_rng([seed, k])
        if eval_rows and test.size > eval_rows:
            test = np.sort(rng.choice(test, eval_rows, replace=False))
        for label, (name, params) in methods.items():
            aligner = get_aligner(name, **params).fit(text[train], image[train], seed=seed)
            subs = aligner.transform(text[test])
            res = diagnose(text[test], image[test], subs, paired=True, seed=seed + k)
            dom = domain_classifier_by_class(subs, image[test], repeats=DOM_REPEATS, seed=seed + k)
            res["domain_acc"], res["dom_s"], res["dom_t"] = dom["acc"], dom["acc_s"], dom["acc_t"]
            res["insample_centroid_residual"] = centroid_residual(aligner.transform(text[train]), image[train])
            for m, v in res.items():
                rows.setdefault(label, {}).setdefault(m, []).append(v)
    mean = {label: {m: float(np.mean(v)) for m, v in r.items()} for label, r in rows.items()}
    std = {label: {m: float(np.std(v)) for m, v in r.items()} for label, r in rows.items()}
    return mean, std


def key_table(mean: dict, std: dict) -> str:
    head = "| method | " + " | ".join(short for _, short in KEY) + " |"
    lines = [head, "|---" * (len(KEY) + 1) + "|"]
    for label, r in mean.items():
        cells = []
        for m, _ in KEY:
            if m == "dom_s":
                cells.append(f"{r['dom_s']:.2f} / {r['dom_t']:.2f}")
            else:
                cells.append(f"{r[m]:.2e}" if m.startswith("insample") else f"{r[m]:.3f} ± {std[label][m]:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dominance(mean: dict, method: str = "AnisoAlign") -> tuple[list[str], bool]:
    """Does ``method`` dominate each baseline: dom lower, knn and r1 no more than 0.01 below?"""
    a = mean[method]
    out, all_ok = [], True
    for b in BASELINES:
        r = mean[b]
        checks = {"dom lower": a["domain_acc"] < r["domain_acc"],
                  "knn ≥ −0.01": a["knn_overlap@10"] >= r["knn_overlap@10"] - 0.01,
                  "r1 ≥ −0.01": a["R@1"] >= r["R@1"] - 0.01}
        ok = all(checks.values())
        all_ok &= ok
        failed = [k for k, v in checks.items() if not v]
        out.append(f"{b}: {'yes' if ok else 'NO (' + ', '.join(failed) + ')'}")
    resid = a["insample_centroid_residual"] <= 1e-3
    return out + [f"in-sample centroid ≤ 1e-3: {'yes' if resid else 'NO'}"], all_ok and resid


def section(name: str, desc: str, mean: dict, std: dict, *, full: bool) -> tuple[list[str], bool]:
    lines, ok = dominance(mean)
    out = [f"## {name} ({desc})", "", key_table(mean, std), "",
           "AnisoAlign (default) dominates — " + "; ".join(lines), ""]
    out += ["<details><summary>More metrics (mean over folds)</summary>", "",
            format_table({m: {c: r[c] for c in (SUMMARY if not full else r) if c in r} for m, r in mean.items()}),
            "", "</details>", ""]
    return out, ok


def keep_downstream(page: str, path: Path) -> str:
    """``page`` with the generated "Downstream" (``bench/transfer.py``) and "Caption decoder"
    (``bench/caption.py``) sections of the page at ``path``, and its record of the removed learned
    stages (``learned``), kept after the title."""
    old = path.read_text() if path.exists() else ""
    blocks = []
    for name in ("downstream", "caption", "learned"):
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if start in old and end in old:
            blocks.append(start + old.split(start, 1)[1].split(end, 1)[0] + end)
    if not blocks:
        return page
    title, _, rest = page.partition("\n")
    return title + "\n\n" + "\n\n".join(blocks) + "\n" + rest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--demo-rows", type=int, default=60_000)
    ap.add_argument("--planted-rows", type=int, default=50_000)
    ap.add_argument("--eval-rows", type=int, default=2000, help="held-out rows scored per fold on the large sets")
    ap.add_argument("--out", default=str(ROOT / "docs" / "quality.md"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from aniso.testing.synthetic import planted_gap
    from demo_world import demo_world

    sets, skipped = load_sets()
    big: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    if args.demo_rows:
        t, i = demo_world(args.demo_rows)
        big["demo world"] = (t, i, f"aniso-demo-tiny open_clip, {t.shape[0]:,} generated scene/caption pairs, "
                                   f"d={t.shape[1]}; metrics on {args.eval_rows} held-out rows per fold")
    if args.planted_rows:
        g = planted_gap(n=args.planted_rows, d=64, seed=args.seed)
        big["planted gap 50k" if args.planted_rows == 50_000 else f"planted gap {args.planted_rows}"] = (
            g.text, g.image, f"synthetic, {args.planted_rows:,} pairs, d=64, rank-3 planted residual; "
                             f"metrics on {args.eval_rows} held-out rows per fold")
    out = ["# Quality: every method on every paired set", "",
           f"Generated by `bench/quality.py` ({args.folds}-fold, seed {args.seed}; same folds for every method). "
           f"Each method is fitted on {args.folds - 1}/{args.folds} of a set (rows used unpaired) and scored on the "
           "held-out fold; figures are mean ± std over folds.", "",
           f"- `dom`: held-out accuracy of a kNN (k=5) classifier telling substitutes from images, averaged over "
           f"{DOM_REPEATS} random half splits per fold (0.5 is ideal).",
           "- `knn`: kNN overlap@10 between the substitutes and the source text (semantics kept).",
           "- `r1`: paired text→image R@1 of the substitutes among the fold's images.",
           "- `dom on S / on T`: the classifier's accuracy on the substitutes and on the images separately (`dom` is "
           "their mean). Very unequal halves mean the two sets differ in spread: the more concentrated set becomes "
           "the other's nearest neighbours (hubness), which lowers `dom` without making the sets alike "
           "(docs/diagnostics.md).",
           "- `in-sample centroid`: ‖mean(S) − mean(T)‖ on all the rows the model was fitted to (out of sample the "
           "centroid residual of a small fold is dominated by sampling noise).",
           "- \"dominates\": `dom` lower than the baseline's, with `knn` and `r1` no more than 0.01 below it.", ""]
    if skipped:
        out += ["Skipped: " + "; ".join(skipped), ""]
    verdicts = {}
    for name, (text, image, desc) in {**sets, **big}.items():
        t0 = time.perf_counter()
        is_big = name in big
        mean, std = evaluate(text, image, args.folds, args.seed, eval_rows=args.eval_rows if is_big else 0)
        lines, ok = section(name, desc, mean, std, full=not is_big)
        verdicts[name] = (ok, mean)
        out += lines
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr, flush=True)
        Path(args.out).write_text(keep_downstream("\n".join(out) + "\n", Path(args.out)))  # partial page
    summary = ["## Summary: does the default dominate every shipped baseline?", "",
               "| set | AnisoAlign dom | knn | r1 | best baseline dom | dominates all | not dominated |",
               "|---|---|---|---|---|---|---|"]
    for name, (ok, mean) in verdicts.items():
        a = mean["AnisoAlign"]
        best = min(BASELINES, key=lambda b: mean[b]["domain_acc"])
        missed = [line.split(":")[0] for line in dominance(mean)[0] if ": NO" in line]
        summary.append(f"| {name} | {a['domain_acc']:.3f} | {a['knn_overlap@10']:.3f} | {a['R@1']:.3f} | "
                       f"{mean[best]['domain_acc']:.3f} ({best}) | {'yes' if ok else 'no'} | "
                       f"{', '.join(missed) or '—'} |")
    if "COCO-500" in verdicts:
        a = verdicts["COCO-500"][1]["AnisoAlign"]
        checks = [("dom ≤ 0.60", a["domain_acc"], a["domain_acc"] <= 0.60), ("knn ≥ 0.90", a["knn_overlap@10"], a["knn_overlap@10"] >= 0.90),
                  ("r1 ≥ 0.55", a["R@1"], a["R@1"] >= 0.55)]
        summary += ["", "COCO-500 target row (issue 9): " + "; ".join(
            f"{c} — {v:.3f} {'MET' if ok else 'NOT MET'}" for c, v, ok in checks) + "."]
    summary += ["", *FINDINGS]
    out[out.index("- \"dominates\": `dom` lower than the baseline's, with `knn` and `r1` no more than 0.01 below it.") + 2:
        out.index("- \"dominates\": `dom` lower than the baseline's, with `knn` and `r1` no more than 0.01 below it.") + 2] = summary + [""]
    text_out = "\n".join(out)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(keep_downstream(text_out + "\n", Path(args.out)))
    print(text_out)


if __name__ == "__main__":
    main()
