"""The paper's experiment in miniature: a caption decoder trained on substitutes, fed real image embeddings.

On the demo world (``bench/demo_world.py``: generated scenes, their captions and their images
embedded by the shipped ``aniso-demo-tiny`` open_clip model), per fold (grouped as in
``bench/quality.py``):

1. each aligner is fitted on the training fold only (rows unpaired) and maps the training fold's
   captions to substitutes;
2. a small GRU decoder conditioned on one embedding (its initial state and every step's input
   read a projection of it) is trained with teacher forcing to write the caption from that
   embedding: on the substitutes, and for reference on the raw caption embeddings and on the
   paired real image embeddings (the *paired-trained* decoder);
3. every decoder is fed the held-out fold's **real image embeddings** and decodes greedily.

The generated captions are parsed back into objects and scored against the true scenes: the
object count on every held-out row, each slot (shape, colour, size, position) on the single-object
rows, and exact match (the same set of objects, in any order) on every row. ``ratio``: a
decoder's mean slot accuracy over the paired-trained decoder's.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/caption.py [--rows 60000] [--folds 3]
        [--train-rows 20000] [--epochs 6] [--write-docs]

``--write-docs`` rewrites the "Caption decoder" section of ``docs/quality.md`` (between the
``caption`` markers, after the Downstream section).
"""

from __future__ import annotations

import argparse
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
from aniso.numeric.arrays import l2_normalize  # noqa: E402

logger = logging.getLogger("bench.caption")

DOCS = ROOT / "docs" / "quality.md"
START, END = "<!-- caption:start -->", "<!-- caption:end -->"
RAW, PAIRED, SHIFT = "raw text", "paired-trained", "centroid shift"
SLOTS = ("shape", "colour", "size", "position")


def scenes_and_captions(n: int, seed: int = 7) -> tuple[list, list[str]]:
    """The demo world's scenes and captions, replayed from the generator's seed (same rows as the cache)."""
    from aniso.demo.scenes import caption, sample_scene

    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, max_objects=2) for _ in range(n)]
    return scenes, [caption(s) for s in scenes]


class Vocab:
    """Word-level vocabulary with ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2."""

    def __init__(self, captions: list[str]) -> None:
        words = sorted({w for c in captions for w in c.split()})
        self.itos = ["<pad>", "<bos>", "<eos>", *words]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def encode(self, captions: list[str]) -> np.ndarray:
        seqs = [[1, *(self.stoi[w] for w in c.split()), 2] for c in captions]
        out = np.zeros((len(seqs), max(map(len, seqs))), dtype=np.int64)
        for r, s in enumerate(seqs):
            out[r, :len(s)] = s
        return out

    def decode(self, ids: np.ndarray) -> list[str]:
        out = []
        for row in ids:
            words = []
            for i in row:
                if i == 2:
                    break
                if i > 2:
                    words.append(self.itos[i])
            out.append(" ".join(words))
        return out


def make_decoder(d: int, vocab: int, hidden: int = 256, emb: int = 64):
    import torch
    from torch import nn

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.init = nn.Linear(d, hidden)
            self.cond = nn.Linear(d, emb)
            self.emb = nn.Embedding(vocab, emb)
            self.gru = nn.GRU(2 * emb, hidden, batch_first=True)
            self.out = nn.Linear(hidden, vocab)

        def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            h0 = torch.tanh(self.init(x)).unsqueeze(0)
            c = self.cond(x).unsqueeze(1).expand(-1, tokens.shape[1], -1)
            y, _ = self.gru(torch.cat([self.emb(tokens), c], dim=2), h0)
            return self.out(y)

        @torch.no_grad()
        def generate(self, x: torch.Tensor, max_len: int) -> np.ndarray:
            h = torch.tanh(self.init(x)).unsqueeze(0)
            c = self.cond(x).unsqueeze(1)
            tok = torch.ones(x.shape[0], 1, dtype=torch.long)
            out = []
            for _ in range(max_len):
                y, h = self.gru(torch.cat([self.emb(tok), c], dim=2), h)
                tok = self.out(y).argmax(-1)
                out.append(tok)
            return torch.cat(out, dim=1).numpy()

    return Decoder()


def train_decoder(x: np.ndarray, seqs: np.ndarray, vocab: int, *, epochs: int, seed: int, batch: int = 256):
    """Teacher-forced cross-entropy, Adam; returns the trained decoder."""
    import torch

    torch.manual_seed(seed)
    model = make_decoder(x.shape[1], vocab)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, st = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(seqs)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(x)), max(1, len(x) // batch)):
            i = torch.from_numpy(idx)
            logits = model(xt[i], st[i, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), st[i, 1:].reshape(-1), ignore_index=0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def parse(text: str) -> list[tuple[str, str, str, str]]:
    """``(size, colour, shape, position)`` of each ``a <size> <colour> <shape> <position>`` phrase."""
    from aniso.demo.scenes import POSITIONS

    pos = "|".join(re.escape(p) for p in POSITIONS.values())
    return [m.groups() for m in re.finditer(rf"a (\w+) (\w+) (\w+) ({pos})", text)]


def score(generated: list[str], scenes: list) -> dict[str, float]:
    """Count accuracy and exact match on every row, slot accuracy on the single-object rows."""
    from aniso.demo.scenes import POSITIONS

    hits: dict[str, list[float]] = {k: [] for k in ("count", *SLOTS, "exact")}
    for text, scene in zip(generated, scenes):
        objs = parse(text)
        truth = [(o.size, o.colour, o.shape, POSITIONS[o.cell]) for o in scene.objects]
        hits["count"].append(float(len(objs) == len(truth)))
        hits["exact"].append(float(sorted(objs) == sorted(truth)))
        if len(truth) == 1:
            got = objs[0] if objs else (None,) * 4
            for slot, a, b in zip(("size", "colour", "shape", "position"), got, truth[0]):
                hits[slot].append(float(a == b))
    out = {k: float(np.mean(v)) for k, v in hits.items()}
    out["slots"] = float(np.mean([out[s] for s in SLOTS]))
    return out


def run(args: argparse.Namespace) -> dict:
    from demo_world import demo_world
    from quality import make_folds

    import torch

    torch.set_num_threads(1)
    text, image = demo_world(args.rows)
    text, image = l2_normalize(text.astype(np.float64)), l2_normalize(image.astype(np.float64))
    scenes, captions = scenes_and_captions(args.rows)
    vocab = Vocab(captions)
    seqs = vocab.encode(captions)
    methods = {SHIFT: ("centroid", {}),
               "AnisoAlign, knn_budget 0.01": ("anisoalign", {"knn_budget": 0.01}),
               "AnisoAlign, closed form": ("anisoalign", {"knn_budget": None, "match_rows": 0}),
               "AnisoAlign, matched": ("anisoalign", {"knn_budget": None})}
    results: dict[str, dict[str, list[float]]] = {}
    for k, test in enumerate(make_folds(image, args.folds, args.seed)):
        train = np.setdiff1d(np.arange(len(text)), test)
        rng = np.random.default_rng([args.seed, k])
        fit_rows = train
        if args.train_rows and train.size > args.train_rows:
            train = np.sort(rng.choice(train, args.train_rows, replace=False))
        if args.test_rows and test.size > args.test_rows:
            test = np.sort(rng.choice(test, args.test_rows, replace=False))
        feats = {RAW: text[train], PAIRED: image[train]}
        for label, (name, params) in methods.items():
            aligner = get_aligner(name, **params).fit(text[fit_rows], image[fit_rows], seed=args.seed)
            feats[label] = aligner.transform(text[train]).astype(np.float64)
        for label, x in feats.items():
            t0 = time.perf_counter()
            model = train_decoder(x, seqs[train], len(vocab.itos), epochs=args.epochs, seed=args.seed + k)
            gen = vocab.decode(model.generate(torch.from_numpy(image[test].astype(np.float32)), seqs.shape[1]))
            s = score(gen, [scenes[i] for i in test])
            for m, v in s.items():
                results.setdefault(label, {}).setdefault(m, []).append(v)
            logger.info("fold %d %s: slots %.3f exact %.3f (%.0f s)", k, label, s["slots"], s["exact"],
                        time.perf_counter() - t0)
    return {"command": " ".join(args.argv), "results": results}


def render(run_out: dict) -> str:
    from transfer import default_label

    res, default = run_out["results"], default_label()
    cols = ("count", *SLOTS, "slots", "exact")
    paired = np.mean(res[PAIRED]["slots"])
    lines = [START, "## Caption decoder: trained on substitutes, fed real images (demo world)", "",
             f"Generated by `{run_out['command']}`. A GRU caption decoder conditioned on one embedding, trained "
             "on substitutes of the training fold's captions (the aligner fitted on the training fold only), "
             "then fed the held-out fold's real image embeddings; greedy decoding, parsed back into objects. "
             "`count`, `exact` (same objects, any order): every held-out row; each slot: the single-object rows; "
             "`slots`: their mean; `ratio`: slots over the paired-trained decoder's. Mean ± std over folds. The decoder "
             "(GRU, hidden 256, Adam, teacher forcing) is small and briefly trained (`--train-rows` rows of each "
             "training fold, `--epochs` epochs; `--test-rows` held-out rows decoded): even the paired-trained decoder "
             "gets the shape right on under half of the single-object rows, so the comparison is between equally "
             "trained decoders, not against a ceiling.", "",
             "| decoder trained on | " + " | ".join(cols) + " | ratio |", "|---" * (len(cols) + 2) + "|"]
    for label, r in res.items():
        name = f"**{label} (default)**" if label == default else label
        cells = [f"{np.mean(r[c]):.3f} ± {np.std(r[c]):.3f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(r['slots']) / paired:.2f} |")
    # targets: ≥ 90% of the paired decoder's slot accuracy; ≥ +0.02 over the shift on the slots where
    # raw text and paired differ (by more than 0.02)
    differ = [s for s in SLOTS if abs(np.mean(res[PAIRED][s]) - np.mean(res[RAW][s])) > 0.02]
    ratio = np.mean(res[default]["slots"]) / paired
    gain = float(np.mean([np.mean(res[default][s]) - np.mean(res[SHIFT][s]) for s in differ])) if differ else float("nan")
    lines += ["", f"- Default ≥ 90% of the paired-trained decoder's slot accuracy: {ratio:.2f} — "
              f"**{'MET' if ratio >= 0.9 else 'NOT MET'}**.",
              f"- Default − centroid shift on the slots where raw text and paired differ by > 0.02 "
              f"({', '.join(differ) or 'none'}): {gain:+.3f} (target ≥ +0.02) — "
              f"**{'MET' if differ and gain >= 0.02 else 'NOT MET'}**.", "", END]
    return "\n".join(lines)


def write_docs(section: str, path: Path = DOCS) -> None:
    """Replace the caption section of ``path`` (or put it after the Downstream section / the title)."""
    from _common import replace_section

    replace_section(path, START, END, section, after="<!-- downstream:end -->")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-rows", type=int, default=20_000, help="decoder training rows per fold (the aligner sees the whole fold)")
    ap.add_argument("--test-rows", type=int, default=5_000, help="held-out rows decoded per fold")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--json", default="")
    ap.add_argument("--from-json", default="", help="render an earlier run's JSON, run nothing")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    argv = sys.argv[1:]
    drop = {i for i, a in enumerate(argv) if a == "--json"} | {i + 1 for i, a in enumerate(argv) if a == "--json"}
    args.argv = ["bench/caption.py", *[a for i, a in enumerate(argv) if i not in drop]]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = json.loads(Path(args.from_json).read_text()) if args.from_json else run(args)
    if args.json and not args.from_json:
        Path(args.json).write_text(json.dumps(out))
    section = render(out)
    print(section)
    if args.write_docs:
        write_docs(section)


if __name__ == "__main__":
    main()
