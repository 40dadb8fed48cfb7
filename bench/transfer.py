"""Downstream transfer: heads trained on substitutes of the captions, tested on the paired real images.

What substitutes are for: a model trained on text alone that works when it is given real image
embeddings. For every method and every set, k folds (grouped by image, as in
``bench/quality.py``): the aligner is fitted on the training fold only (rows used unpaired), the
training fold's captions are mapped to substitutes, and four text-only heads are trained on them
with the captions' labels, then scored on the held-out fold's *paired image embeddings*:

* multinomial logistic regression with a bias, at two L2 strengths (loss: mean cross-entropy +
  ``λ‖W‖²``, bias unpenalised; λ = 1e-3 and 1e-4; full-batch L-BFGS in torch, float64);
* nearest class mean (cosine to each class's mean substitute);
* cosine kNN vote (k = 10 training substitutes).

Against three references trained the same way on the same rows: *raw text* (the captions'
embeddings, no alignment), the *paired oracle* (trained on the training fold's real image
embeddings) and the *paired linear map* (substitutes from the least-squares affine map of the
training fold's captions onto their own images: what a linear correction could reach with the pairs,
which no aligner here sees; only where the training fold has ≥ 10 rows per dimension, i.e. on the
demo world). ``share`` is the share of the raw → oracle gap a method closes,
``(acc − raw) / (oracle − raw)``, shown where that gap is resolved (≥ 0.01 and ≥ 2 fold standard
errors).

Labels: real labels where the data has them (COCO-500 and Flickr8k-500: keywords of the captions;
the fashion sets: their category columns); the sets without labels (ConVIRT-500, VideoCLIP-100,
CLASP-99) get text-derived clusters (spherical k-means, k = 5, on the raw text embeddings, which
favours raw text). The demo world (``bench/demo_world.py``, 60,000 pairs by default, true scene
attributes) gives five tasks: the object count on every row, and the shape, colour, size and
position of the object on the single-object rows (where the image has one answer).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/transfer.py [--folds 5] [--demo-folds 3]
        [--demo-rows 60000] [--write-docs]

``--write-docs`` rewrites the "Downstream" section at the top of ``docs/quality.md`` (between the
``downstream`` markers; ``bench/quality.py`` keeps that section when it regenerates the page).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import sys
import time
from pathlib import Path

import _env  # noqa: E402,F401 - before numpy: one BLAS thread (bench/_env.py)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from aniso.methods import get_aligner  # noqa: E402
from aniso.methods.params import AnisoAlignParams  # noqa: E402
from aniso.numeric.arrays import l2_normalize  # noqa: E402

logger = logging.getLogger("bench.transfer")

DATA = ROOT.parent / "shared" / "data"
DOCS = ROOT / "docs" / "quality.md"
START, END = "<!-- downstream:start -->", "<!-- downstream:end -->"

RAW, ORACLE, SHIFT = "raw text", "paired oracle", "centroid shift"
#: a reference that uses the pairs: the least-squares affine map from the training fold's captions to
#: their images, renormalised. What a linear correction (AnisoAlign's family) could reach if it knew
#: the pairs; not a ceiling in the strict sense (least squares is not fitted for the heads).
LINEAR = "paired linear map"
#: fitted only where the training fold has this many rows per dimension (the demo world): on the
#: small real sets least squares would reproduce the training images (more unknowns than rows)
LINEAR_ROWS_PER_DIM = 10
#: label → (method, params); the AnisoAlign rows name their setting, "(default)" is added at run time
METHODS: dict[str, tuple[str, dict]] = {
    RAW: ("identity", {}),
    SHIFT: ("centroid", {}),
    "ReAlign": ("realign", {}),
    "MomentMatch shrink 0.9": ("moment", {"shrinkage": 0.9}),
    "C3 (training noise)": ("c3", {}),
    "AnisoAlign, knn_budget 0.01": ("anisoalign", {"knn_budget": 0.01}),
    "AnisoAlign, closed form": ("anisoalign", {"knn_budget": None, "match_rows": 0}),
    "AnisoAlign, closed form, no bounds": ("anisoalign", {"bounded": False, "match_rows": 0}),
    "AnisoAlign, matched": ("anisoalign", {"knn_budget": None, "match_rows": 4000}),
}
HEADS = ("LR 1e-3", "LR 1e-4", "NCM", "kNN")
LR_L2 = {"LR 1e-3": 1e-3, "LR 1e-4": 1e-4}
KNN_K = 10
MIN_CLASS = 5


#: Why the default is what it is (written from the tables this script printed; see the section's commands).
WHY: list[str] = [
    "### Why the default is the matched refinement (`match_rows: 4000`, `knn_budget: null`)",
    "",
    "* **What was left was a rotation.** The closed form (and every map fitted from the two modalities' moments) "
    "is blind to a rotation between the modalities. The *paired linear map* row shows how much a linear map can do "
    "when it knows the pairs: on the demo world's position task at L2 1e-4 it closes 0.85 of the gap where the "
    "closed form closes 0.53. The matched refinement (docs/method.md §1b) estimates that rotation without pairs, "
    "from a one-to-one matching of 4,000 premapped text rows with 8,000 image rows.",
    "* **Demo world (true labels, 60,000 pairs):** position 0.699 against the closed form's 0.673 and the shift's "
    "0.678 at L2 1e-3 (oracle 0.701; share 0.98, above the paired linear map's 0.81), 0.802 against 0.750 / 0.698 "
    "at 1e-4 (share 0.73; paired linear map 0.85); object count at 1e-4 0.952 against 0.944 / 0.934 (share 0.76, "
    "paired linear map 0.63); shape at 1e-4 0.425 against 0.402 / 0.354 (oracle 0.408). The kNN-vote head agrees "
    "on position (0.823 against 0.814 / 0.732).",
    "* **Real sets:** above the shift on every set at both strengths, on the sets of ≥ 500 pairs by +0.043 on "
    "average at 1e-3 (the closed form: +0.014) and +0.027 at 1e-4 (+0.018): COCO-500 0.842 against the closed "
    "form's 0.779 (oracle 0.833), Flickr8k-500 0.737 against 0.706, VideoCLIP-100 0.570 against 0.500, "
    "fashion-fashionclip 0.882 against 0.823, fashion-marqo-fashionclip 1.000 against 0.959. Behind the closed form "
    "on ConVIRT-500 (0.492 against 0.502 at 1e-3, text-derived clusters) and CLASP-99 at 1e-3 (0.406 against "
    "0.409; ahead at 1e-4, 0.427 against 0.399). On these small sets (≤ 500 rows in 512-d or more) the regression "
    "is held near the closed form by its prior (`d` pseudo-pairs) and still gains.",
    "* **Caption decoder** (next section): here the refinement does not pay: slot accuracy 0.768 ± 0.019 against "
    "the closed form's 0.780 ± 0.005 (position 0.628 ± 0.063 against 0.671; count 0.944 against 0.922), the "
    "shift's 0.716 and the paired-trained decoder's 0.773; both of that section's targets are still met (0.99 of "
    "the paired decoder, +0.077 over the shift). The decoder's position is noisy across folds (± 0.063).",
    "* **Fit cost:** 2.5 s against 0.75 s per 40,000-row demo fold (one thread, a run on the otherwise idle "
    "machine before the kNN floor was added; its accuracies were identical to those above): one 4,000 × 8,000 "
    "assignment. The `fit s` column of the run above was taken while the test suite shared the machine (6.6 s "
    "against 1.5 s). Applying costs the same (the map is linear).",
    "* **Not met:** the position share at 1e-4 (0.73 against the 0.75 asked; the paired linear map reaches 0.85, so "
    "better matching could still gain), and on object count at 1e-3 the default is 0.0008 below the shift (0.923 "
    "each to three places; standard error of the difference 0.0017), a task with no gap at that strength (the oracle, 0.920, is below "
    "raw text, 0.924).",
    "* **The kNN budget** (`knn_budget: 0.01`) is still the setting for data whose image side carries variance the "
    "text cannot explain (the planted-gap set, `dom` 0.469 and kNN overlap 0.412 without it); it applies to the "
    "closed form alone and turns the refinement off. `match_rows: 0` gives the closed form of the previous default. "
    "Where the corpora share no content the matching turns the text at random; the refinement's kNN floor "
    "(`match_knn_floor: 0.5`, docs/method.md §1b) then halves it or falls back to the closed form.",
    "* **Proxies:** `dom`, kNN overlap and R@1 (the tables further down) are diagnostics. The refinement turns "
    "the text's directions, so it keeps less of the text's own neighbourhoods than the closed form; the "
    "downstream heads above, trained on it and tested on real images, are what it is chosen by. C3's training "
    "noise (√0.016 per coordinate) lowers the logistic-regression and kNN heads on every demo-world task.",
    "",
]


def default_label() -> str:
    """The AnisoAlign row whose parameters are the shipped defaults."""
    params = AnisoAlignParams()
    if params.knn_budget is not None:
        return f"AnisoAlign, knn_budget {params.knn_budget:g}"
    return "AnisoAlign, matched" if params.match_rows == 4000 else "AnisoAlign, closed form"


# ---------------------------------------------------------------------------------------------
# heads


def fit_logreg(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, max_iter: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression, mean cross-entropy + ``l2·‖W‖²`` (bias free); ``(W, b)``.

    Full-batch L-BFGS in float32, at most ``max_iter`` iterations (on the demo world the accuracy
    moves by < 0.005 beyond that; the machine is shared, so this is what a rerun can afford).
    """
    import torch

    xt, yt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float32, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def knn_vote(train: np.ndarray, y: np.ndarray, test: np.ndarray, n_classes: int, k: int = KNN_K,
             chunk: int = 1024) -> np.ndarray:
    """Majority vote of the ``k`` most cosine-similar training rows (ties: smallest label)."""
    a, q = l2_normalize(train.astype(np.float32)), l2_normalize(test.astype(np.float32))
    k = min(k, a.shape[0])
    out = np.empty(q.shape[0], dtype=np.int64)
    for s in range(0, q.shape[0], chunk):
        sim = q[s:s + chunk] @ a.T
        idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        votes = np.zeros((idx.shape[0], n_classes))
        np.add.at(votes, (np.repeat(np.arange(idx.shape[0]), k), y[idx].ravel()), 1.0)
        out[s:s + chunk] = votes.argmax(1)
    return out


def head_accuracies(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                    n_classes: int, knn_rows: int = 0, seed: int = 0) -> dict[str, float]:
    """Accuracy on ``(x_test, y_test)`` of each head trained on ``(x_train, y_train)``.

    ``knn_rows``: score the kNN vote on a seeded sample of that many test rows (0: all).
    """
    acc = {}
    for head, l2 in LR_L2.items():
        w, b = fit_logreg(x_train, y_train, n_classes, l2)
        acc[head] = float(np.mean(np.argmax(x_test @ w + b, axis=1) == y_test))
    means = np.full((n_classes, x_train.shape[1]), np.nan)
    for c in np.unique(y_train):
        means[c] = x_train[y_train == c].mean(0)
    scores = l2_normalize(x_test) @ np.nan_to_num(l2_normalize(np.nan_to_num(means))).T
    scores[:, np.isnan(means[:, 0])] = -np.inf
    acc["NCM"] = float(np.mean(scores.argmax(1) == y_test))
    sel = np.arange(len(y_test))
    if knn_rows and len(sel) > knn_rows:
        sel = np.sort(np.random.default_rng(seed).choice(sel, knn_rows, replace=False))
    acc["kNN"] = float(np.mean(knn_vote(x_train, y_train, x_test[sel], n_classes) == y_test[sel]))
    return acc


# ---------------------------------------------------------------------------------------------
# sets and labels


def _keyword_labels(captions: list[str], classes: list[tuple[str, list[str]]]) -> np.ndarray:
    """First class (in the given priority) one of whose words the caption contains; −1: none."""
    pats = [re.compile(r"\b(" + "|".join(words) + r")\b") for _, words in classes]
    out = np.full(len(captions), -1)
    for r, cap in enumerate(captions):
        for c, pat in enumerate(pats):
            if pat.search(cap.lower()):
                out[r] = c
                break
    return out


COCO_CLASSES = [
    ("animal", ["dogs?", "cats?", "horses?", "cows?", "sheep", "elephants?", "giraffes?", "zebras?", "birds?",
                "bears?", "animals?", "puppy", "kitten"]),
    ("vehicle", ["cars?", "bus(es)?", "trains?", "trucks?", "motorcycles?", "bikes?", "bicycles?", "planes?",
                 "airplanes?", "jets?", "boats?", "motorbikes?", "vehicles?"]),
    ("food", ["pizzas?", "food", "sandwich(es)?", "plates?", "cakes?", "donuts?", "doughnuts?", "bananas?",
              "broccoli", "vegetables?", "fruits?", "meals?", "dishes", "bowls?", "hot ?dogs?", "oranges?"]),
    ("room", ["kitchens?", "bathrooms?", "toilets?", "rooms?", "beds?", "bedroom", "couch(es)?", "sinks?",
              "living", "office", "desks?", "refrigerator", "oven"]),
    ("sport", ["tennis", "skateboard(s|er|ing)?", "surf(s|er|ing|board)?", "ski(s|er|ing)?", "baseball",
               "frisbee", "snowboard(er|ing)?", "soccer", "kite"]),
    ("person", ["man", "men", "woman", "women", "person", "people", "boy", "girl", "child(ren)?", "kids?",
                "players?", "guy", "lady", "couple"]),
]
FLICKR_CLASSES = [
    ("dog", ["dogs?", "pupp(y|ies)"]),
    ("child", ["boys?", "girls?", "child(ren)?", "kids?", "baby", "toddler"]),
    ("woman", ["woman", "women", "lady"]),
    ("man", ["man", "men", "guy"]),
    ("people", ["people", "persons?", "group", "crowd", "players?", "team"]),
]


def _encode(names: list[str]) -> tuple[np.ndarray, list[str]]:
    classes = sorted(set(names))
    return np.array([classes.index(n) for n in names]), classes


def _text_clusters(text: np.ndarray, k: int = 5, seed: int = 0, iters: int = 50) -> np.ndarray:
    """Spherical k-means of the raw text embeddings (k-means++ seeding)."""
    x = l2_normalize(text.astype(np.float64))
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(k - 1):
        d = np.clip(1.0 - np.max(x @ np.array(centres).T, axis=1), 0.0, None)
        centres.append(x[rng.choice(len(x), p=d / d.sum())])
    c = np.array(centres)
    for _ in range(iters):
        lab = np.argmax(x @ c.T, axis=1)
        c = l2_normalize(np.array([x[lab == j].mean(0) if np.any(lab == j) else c[j] for j in range(k)]))
    return np.argmax(x @ c.T, axis=1)


def _drop_rare(y: np.ndarray, classes: list[str]) -> tuple[np.ndarray, list[str]]:
    """Rows of classes with fewer than ``MIN_CLASS`` rows become −1; labels renumbered."""
    keep = [c for c in range(len(classes)) if np.sum(y == c) >= MIN_CLASS]
    out = np.full_like(y, -1)
    for new, c in enumerate(keep):
        out[y == c] = new
    return out, [classes[c] for c in keep]


Task = tuple[np.ndarray, list[str], str]  # labels (−1: not in the task), class names, label source


def real_sets() -> tuple[dict[str, tuple[np.ndarray, np.ndarray, dict[str, Task]]], list[str]]:
    """Real paired sets: name → (text, image, {task: (labels, classes, source)}); skipped reasons."""
    from quality import load_sets

    loaded, skipped = load_sets()
    out = {}
    for name, (text, image, _) in loaded.items():
        tasks: dict[str, Task] = {}
        if name == "COCO-500":
            caps = [r["caption"] for r in json.loads((DATA / "mind-the-gap-coco500" / "coco500_captions.json").read_text())]
            y = _keyword_labels(caps, COCO_CLASSES)
            tasks["caption keyword"] = (*_drop_rare(y, [c for c, _ in COCO_CLASSES]), "caption keywords")
        elif name == "Flickr8k-500":
            with open(DATA / "flickr8k-clip-vitb32" / "metadata.csv", newline="") as f:
                caps = [r["caption"] for r in csv.DictReader(f)]
            y = _keyword_labels(caps, FLICKR_CLASSES)
            tasks["caption keyword"] = (*_drop_rare(y, [c for c, _ in FLICKR_CLASSES]), "caption keywords")
        elif name == "fashion-fashionclip":
            meta = json.loads((DATA / name / "product_metadata.json").read_text())
            by_index = {int(p["index"]): p for p in meta["products"].values()}
            y, classes = _encode([by_index[i]["wear_type"] for i in range(len(text))])
            tasks["wear_type"] = (*_drop_rare(y, classes), "the `wear_type` column")
        elif name == "fashion-marqo-fashionclip":
            with open(DATA / name / "styles.csv", newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f, delimiter=";"))
            y, classes = _encode([r["masterCategory"] for r in rows])
            tasks["masterCategory"] = (*_drop_rare(y, classes), "the `masterCategory` column")
        else:
            y = _text_clusters(text)
            tasks["text clusters"] = (*_drop_rare(y, [f"cluster {j}" for j in range(5)]),
                                      "text-derived clusters (k-means, k=5, raw text)")
        out[name] = (text, image, tasks)
    return out, skipped


def demo_tasks(n: int, seed: int = 7) -> dict[str, Task]:
    """The demo world's scene attributes, replayed from the generator's seed (same rows as the cache)."""
    from aniso.demo.scenes import COLOURS, POSITIONS, SHAPES, SIZES, sample_scene

    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, max_objects=2) for _ in range(n)]
    count = np.array([len(s.objects) for s in scenes])
    single = count == 1
    cells = list(POSITIONS)
    attrs = {
        "shape": (list(SHAPES), lambda o: SHAPES.index(o.shape)),
        "colour": (list(COLOURS), lambda o: list(COLOURS).index(o.colour)),
        "size": (list(SIZES), lambda o: list(SIZES).index(o.size)),
        "position": ([POSITIONS[c] for c in cells], lambda o: cells.index(o.cell)),
    }
    tasks: dict[str, Task] = {"object count": (count - 1, ["one", "two"], "true scene attribute, all rows")}
    for name, (classes, of) in attrs.items():
        y = np.array([of(s.objects[0]) if one else -1 for s, one in zip(scenes, single)])
        tasks[name] = (y, classes, "true scene attribute, single-object rows")
    return tasks


# ---------------------------------------------------------------------------------------------
# protocol


def evaluate(text: np.ndarray, image: np.ndarray, tasks: dict[str, Task], n_folds: int, seed: int,
             methods: dict[str, tuple[str, dict]], knn_rows: int = 0, head_rows: int = 0,
             test_rows: int = 0) -> tuple[dict, dict]:
    """``acc[task][head][method]`` = per-fold accuracies; ``fit_s[method]`` = per-fold fit seconds.

    The aligners always see the whole training fold; ``head_rows`` / ``test_rows`` (0: all) cap, per
    task and fold, the seeded sample of labelled training rows the heads are trained on and of
    held-out rows they are scored on (the same rows for every method).
    """
    from quality import make_folds

    text, image = l2_normalize(text.astype(np.float64)), l2_normalize(image.astype(np.float64))
    folds = make_folds(image, n_folds, seed)
    acc: dict = {t: {h: {} for h in HEADS} for t in tasks}
    fit_s: dict[str, list[float]] = {}
    for k, test in enumerate(folds):
        train = np.setdiff1d(np.arange(text.shape[0]), test)
        feats: dict[str, np.ndarray] = {ORACLE: image[train]}
        if train.size >= LINEAR_ROWS_PER_DIM * text.shape[1]:
            feats[LINEAR] = paired_linear_map(text[train], image[train])
        for label, (name, params) in methods.items():
            t0 = time.perf_counter()
            aligner = get_aligner(name, **params).fit(text[train], image[train], seed=seed)
            fit_s.setdefault(label, []).append(time.perf_counter() - t0)
            feats[label] = aligner.transform(text[train]).astype(np.float64)
        for task, (y, classes, _) in tasks.items():
            sel_tr, te = np.flatnonzero(y[train] >= 0), test[y[test] >= 0]
            rng = np.random.default_rng([seed, k, len(task)])
            if head_rows and sel_tr.size > head_rows:
                sel_tr = np.sort(rng.choice(sel_tr, head_rows, replace=False))
            if test_rows and te.size > test_rows:
                te = np.sort(rng.choice(te, test_rows, replace=False))
            ytr, yte = y[train][sel_tr], y[te]
            for label, x in feats.items():
                for head, a in head_accuracies(x[sel_tr], ytr, image[te], yte, len(classes), knn_rows, seed + k).items():
                    acc[task][head].setdefault(label, []).append(a)
        logger.info("fold %d/%d done", k + 1, n_folds)
    return acc, fit_s


def paired_linear_map(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    """``normalize([x, 1] W)`` with ``W`` the least-squares fit of each caption's own image (uses the pairs)."""
    design = np.c_[text, np.ones(text.shape[0])]
    weights = np.linalg.lstsq(design, image, rcond=None)[0]
    return l2_normalize(design @ weights)


def gap_share(accs: dict[str, list[float]], label: str) -> float | None:
    """Share of the raw → oracle gap closed by ``label``; None where the gap is not resolved."""
    raw, orc = np.array(accs[RAW]), np.array(accs[ORACLE])
    gap = orc - raw
    se = gap.std(ddof=1) / np.sqrt(gap.size) if gap.size > 1 else 0.0
    if gap.mean() < 0.01 or gap.mean() < 2 * se:
        return None
    return float((np.mean(accs[label]) - raw.mean()) / gap.mean())


def diff_se(accs: dict[str, list[float]], a: str, b: str) -> tuple[float, float]:
    """Mean and standard error over folds of ``acc(a) − acc(b)`` (paired by fold)."""
    d = np.array(accs[a]) - np.array(accs[b])
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0


def task_table(acc: dict[str, dict[str, list[float]]], default: str, fit_s: dict[str, list[float]]) -> list[str]:
    """Rows: methods; columns: heads (mean ± std over folds, share of the gap closed)."""
    labels = [RAW, *[m for m in acc[HEADS[0]] if m not in (RAW, LINEAR, ORACLE)], *[m for m in (LINEAR,) if m in acc[HEADS[0]]], ORACLE]
    lines = ["| method | " + " | ".join(HEADS) + " | fit s |", "|---" * (len(HEADS) + 2) + "|"]
    for label in labels:
        cells = []
        for h in HEADS:
            v = np.array(acc[h][label])
            share = gap_share(acc[h], label) if label not in (RAW, ORACLE) else None
            cells.append(f"{v.mean():.3f} ± {v.std():.3f}" + (f" ({share:.2f})" if share is not None else ""))
        name = f"**{label} (default)**" if label == default else label
        fit = f"{np.mean(fit_s[label]):.2f}" if label in fit_s else "—"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fit} |")
    return lines


def summary(results: dict, default: str) -> tuple[list[str], list[str]]:
    """The headline table (logistic regression) and the target verdicts."""
    variants = [m for m in METHODS if m.startswith("AnisoAlign")]
    present = {m for r in results.values() for t in r["acc"] for m in r["acc"][t]["LR 1e-3"]}
    cols = [m for m in (SHIFT, "MomentMatch shrink 0.9", *variants, LINEAR) if m in present]
    lines = []
    for head in LR_L2:
        lines += [f"**{head}** — accuracy on the real images (share of the raw → oracle gap closed, where resolved)", "",
                  "| set · task | raw text | " + " | ".join(cols) + " | paired oracle |",
                  "|---" * (len(cols) + 3) + "|"]
        for set_name, r in results.items():
            for task, acc in r["acc"].items():
                a = acc[head]
                cells = []
                for m in cols:
                    if m not in a:  # the paired linear map is fitted on the demo world only
                        cells.append("—")
                        continue
                    share = gap_share(a, m)
                    cell = f"{np.mean(a[m]):.3f}" + (f" ({share:.2f})" if share is not None else "")
                    cells.append(f"**{cell}**" if m == default else f"*{cell}*" if m == LINEAR else cell)
                lines.append(f"| {set_name} · {task} | {np.mean(a[RAW]):.3f} | " + " | ".join(cells) +
                             f" | {np.mean(a[ORACLE]):.3f} |")
        lines.append("")
    verdicts = []
    demo = {s: r for s, r in results.items() if s.startswith("demo world")}
    for set_name, r in demo.items():
        for head in LR_L2:
            shares, below = [], []
            for task, acc in r["acc"].items():
                share = gap_share(acc[head], default)
                if share is not None:
                    shares.append(f"{task} {share:.2f}")
                    ok_share = share >= 0.75
                    if not ok_share:
                        below.append(f"{task} {share:.2f}")
                d, _ = diff_se(acc[head], default, SHIFT)
                if round(d, 3) < 0:  # differences below 0.0005 (under one test row in 2,000) are ties
                    below.append(f"{task}: {d:+.3f} vs the shift")
            linear = [f"{task} {share:.2f}" for task, acc in r["acc"].items()
                      if LINEAR in acc[head] and (share := gap_share(acc[head], LINEAR)) is not None]
            verdicts.append(f"- {set_name}, {head}: the default closes ≥ 0.75 of every resolved gap and is at or above "
                            f"the shift on every task — **{'MET' if not below else 'NOT MET'}** (shares: "
                            f"{', '.join(shares) or 'no resolved gap'}" + (f"; short: {', '.join(below)}" if below else "") + ")"
                            + (f"; the paired linear map, which knows the pairs, closes: {', '.join(linear)}" if linear else "")
                            + ".")
    big = {s: r for s, r in results.items() if not s.startswith("demo world") and r["n"] >= 500}
    for head in LR_L2:
        diffs, fails = [], []
        for set_name, r in big.items():
            for task, acc in r["acc"].items():
                d, se = diff_se(acc[head], default, SHIFT)
                diffs.append(d)
                if d < 0:
                    fails.append(f"{set_name} {d:+.3f} (SE {se:.3f}{', beyond one SE' if d < -se else ''})")
        if diffs:
            mean = float(np.mean(diffs))
            verdicts.append(f"- Real sets ≥ 500 pairs ({', '.join(big)}), {head}: default − shift on average "
                            f"{mean:+.3f} (target ≥ +0.01: **{'MET' if mean >= 0.01 else 'NOT MET'}**); at or above the "
                            f"shift on every set: **{'MET' if not fails else 'NOT MET'}**"
                            + (f" ({'; '.join(fails)})" if fails else "") + ".")
    return lines, verdicts


def render(results: dict, skipped: list[str], commands: list[str], default: str, elapsed: float) -> str:
    out = [START, "## Downstream: heads trained on substitutes, tested on real images", "",
           "Generated by " + " and ".join(f"`{c}`" for c in commands) + f" ({elapsed / 60:.0f} min on one thread). "
           "What substitutes are for: a model trained on text alone, used on real image embeddings. Per fold, "
           "each aligner is fitted on the training fold only (rows unpaired); heads are trained on the "
           "substitutes of the training fold's captions with the captions' labels and tested on the held-out "
           "fold's **paired real image embeddings**. References: *raw text* (heads trained on the caption "
           "embeddings), the *paired oracle* (trained on the training fold's real images) and, on the demo world, the "
           "*paired linear map* (substitutes from the least-squares affine map of the training captions onto their own "
           "images: what a linear correction could reach if it knew the pairs, which no aligner sees). Heads: multinomial "
           "logistic regression with bias (mean cross-entropy + λ‖W‖², λ = 1e-3 and 1e-4), nearest class mean "
           "(cosine), cosine kNN vote (k = 10). On the demo world each aligner is fitted on the whole training fold (40,000 rows) and the heads are trained on a seeded sample of 8,000 of its labelled rows per task and scored on 4,000 held-out rows (the same rows for every method; what this shared 2-core machine could afford, `--head-rows`, `--test-rows`). Figures: accuracy, mean ± std over folds; in brackets the share of "
           "the raw → oracle gap closed, `(acc − raw) / (oracle − raw)`, where that gap is resolved (≥ 0.01 and ≥ 2 "
           "fold standard errors). `fit s`: mean aligner fit wall time per fold (one thread, shared machine). "
           f"The default is **{default}**.", "",
           "Labels: COCO-500 and Flickr8k-500 — keywords of the captions (classes in `bench/transfer.py`; "
           "captions with none are left out); fashion-fashionclip — its `wear_type` column; "
           "fashion-marqo-fashionclip — its `masterCategory` column; ConVIRT-500, VideoCLIP-100, CLASP-99 — no "
           "labels in the data: **text-derived clusters** (k-means on the raw text, k = 5), which favour raw text. "
           "Demo world — true scene attributes: object count on every row; shape, colour, size and position on "
           "the single-object rows. Classes with fewer than 5 rows are left out.", ""]
    if skipped:
        out += ["Skipped: " + "; ".join(skipped), ""]
    lines, verdicts = summary(results, default)
    out += ["### Targets (issue 23)", "", *verdicts, "", *WHY, "### Logistic regression, every set", "", *lines]
    out += ["### Every head, per set", ""]
    for set_name, r in results.items():
        out += [f"<details><summary>{set_name}: {r['desc']}</summary>", ""]
        for task, acc in r["acc"].items():
            out += [f"**{task}** ({r['tasks'][task]})", "", *task_table(acc, default, r["fit_s"]), ""]
        out += ["</details>", ""]
    out.append(END)
    return "\n".join(out)


def write_docs(section: str, path: Path = DOCS) -> None:
    """Replace the downstream section of ``path`` (or insert it after the title)."""
    from _common import replace_section

    replace_section(path, START, END, section)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=5, help="folds on the real sets")
    ap.add_argument("--demo-folds", type=int, default=3)
    ap.add_argument("--demo-rows", type=int, default=60_000, help="0: no demo world")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", default="", help="comma-separated subset of set names (default: all)")
    ap.add_argument("--knn-rows", type=int, default=4000, help="demo world: held-out rows the kNN vote is scored on per fold")
    ap.add_argument("--head-rows", type=int, default=8000, help="demo world: training rows per task the heads learn from (0: all)")
    ap.add_argument("--test-rows", type=int, default=4000, help="demo world: held-out rows per task the heads are scored on (0: all)")
    ap.add_argument("--methods", default="", help="semicolon-separated method labels to run (raw text always runs; default: all)")
    ap.add_argument("--write-docs", action="store_true", help="rewrite the Downstream section of docs/quality.md")
    ap.add_argument("--json", default="", help="also write the per-fold accuracies here")
    ap.add_argument("--from-json", default="", help="comma-separated JSON files of earlier runs: render them, run nothing")
    args = ap.parse_args()
    argv = sys.argv[1:]
    drop = {i for i, a in enumerate(argv) if a == "--json"} | {i + 1 for i, a in enumerate(argv) if a == "--json"}
    args.argv = ["bench/transfer.py", *[a for i, a in enumerate(argv) if i not in drop and not a.startswith("--json=")]]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(1)  # the logistic-regression heads
    methods = dict(METHODS)
    if args.methods:
        keep = {RAW, *args.methods.split(";")}
        methods = {k: v for k, v in methods.items() if k in keep}
    default = default_label()
    t_start = time.perf_counter()
    sets, skipped = real_sets() if not args.from_json else ({}, [])
    wanted = set(filter(None, args.sets.split(",")))
    results: dict = {}
    jobs = [(n, t, i, tasks, args.folds) for n, (t, i, tasks) in sets.items()]
    if args.demo_rows and not args.from_json:
        from demo_world import demo_world

        t, i = demo_world(args.demo_rows)
        jobs.append((f"demo world {args.demo_rows // 1000}k", t, i, demo_tasks(args.demo_rows), args.demo_folds))
    commands, elapsed = [" ".join(args.argv)], 0.0
    if args.from_json:
        jobs, commands = [], []
        for path in args.from_json.split(","):
            run = json.loads(Path(path).read_text())
            results.update(run["results"])
            commands.append(run["command"])
            elapsed += run["elapsed_s"]
            skipped += [s for s in run["skipped"] if s not in skipped]
    for name, text, image, tasks, folds in jobs:
        if wanted and name not in wanted and not (name.startswith("demo") and "demo" in wanted):
            continue
        t0 = time.perf_counter()
        demo = name.startswith("demo")
        acc, fit_s = evaluate(text, image, tasks, folds, args.seed, methods, knn_rows=args.knn_rows if demo else 0,
                              head_rows=args.head_rows if demo else 0, test_rows=args.test_rows if demo else 0)
        results[name] = {"acc": acc, "fit_s": fit_s, "n": int(text.shape[0]),
                         "tasks": {t: f"{src}; {int(np.sum(y >= 0)):,} rows, {len(c)} classes" for t, (y, c, src) in tasks.items()},
                         "desc": f"{text.shape[0]:,} pairs, d={text.shape[1]}, {folds} folds"}
        logger.info("%s: %.0f s", name, time.perf_counter() - t0)
        if args.json:
            Path(args.json).write_text(json.dumps({"command": commands[0], "elapsed_s": time.perf_counter() - t_start,
                                                   "skipped": skipped, "results": results}))
    if not args.from_json:
        elapsed = time.perf_counter() - t_start
    section = render(results, skipped, commands, default, elapsed)
    print(section)
    if args.write_docs:
        write_docs(section)


if __name__ == "__main__":
    main()
