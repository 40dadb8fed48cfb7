"""The reference ReAlign, run the way the one-file reference script runs it (the baseline of
``bench/scale.py``).

Written from the published description of ReVision's ``embed_ReAlign.py``: the embeddings come
as pickle files of 200,000 fp16 rows each, every file is loaded and the whole corpus is held in
memory as float64 numpy, ReAlign is computed in float64 (L2-normalise; anchor, trace and
centroid steps, docs/method.md §7), and the substitutes are written as pickle files of the same
row counts.

Run: ``python bench/reference_realign.py --text DIR --image DIR --out DIR``; prints one JSON line
with the wall time of each step.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

import numpy as np


def load(folder: Path) -> tuple[list[str], np.ndarray, list[int]]:
    """Every ``*.pkl`` of ``folder`` (sorted) concatenated: ids, float64 rows, rows per file."""
    ids: list[str] = []
    blocks, sizes = [], []
    for path in sorted(folder.glob("*.pkl")):
        with open(path, "rb") as f:
            part = pickle.load(f)
        ids.extend(part["ids"])
        blocks.append(part["embeddings"])
        sizes.append(len(part["ids"]))
    return ids, np.concatenate(blocks).astype(np.float64), sizes


def normalize(x: np.ndarray) -> np.ndarray:
    x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    return x


def trace(x: np.ndarray, mu: np.ndarray) -> float:
    """``E‖x − μ‖²`` without an n × d temporary (the baseline is kept lean in memory)."""
    return float(np.einsum("ij,ij->", x, x) / x.shape[0] - mu @ mu)


def realign(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    """ReAlign in float64 on whole arrays (in place on ``text``)."""
    text, image = normalize(text), normalize(image)
    mu_t, mu_i = text.mean(0), image.mean(0)
    trace_t, trace_i = trace(text, mu_t), trace(image, mu_i)
    scale = np.sqrt(trace_i / (trace_t + 1e-10))
    text -= mu_t
    text *= scale
    text += mu_i
    aligned = normalize(text)  # anchor + trace
    aligned -= aligned.mean(0) - mu_i  # centroid
    return normalize(aligned)


def save(folder: Path, ids: list[str], rows: np.ndarray, sizes: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for i, n in enumerate(sizes):
        with open(folder / f"realign_{i:04d}.pkl", "wb") as f:
            pickle.dump({"ids": ids[start : start + n], "embeddings": rows[start : start + n].astype(np.float32)}, f,
                        protocol=pickle.HIGHEST_PROTOCOL)
        start += n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--text", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    t = {}
    start = time.perf_counter()
    ids, text, sizes = load(args.text)
    _, image, _ = load(args.image)
    t["load_s"] = time.perf_counter() - start
    out = realign(text, image)
    del image
    t["realign_s"] = time.perf_counter() - start - t["load_s"]
    save(args.out, ids, out, sizes)
    t["save_s"] = time.perf_counter() - start - t["load_s"] - t["realign_s"]
    t["rows"] = len(ids)
    print(json.dumps(t))


if __name__ == "__main__":
    main()
