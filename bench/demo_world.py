"""The demo-world corpus: captioned scenes embedded by the shipped ``aniso-demo-tiny`` open_clip model.

A real contrastive model (modality gap ≈ 0.57) with as many pairs as wanted, generated
deterministically from a seed, so methods can be judged on ≥ 60,000 rows. The arrays
are cached under ``.cache/`` (git-ignored), never committed.

    .venv/bin/python bench/demo_world.py [--n 60000] [--seed 7]     # prints gap and R@1 stats
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CACHE = ROOT / ".cache"
logger = logging.getLogger("bench.demo_world")


def demo_world(n: int = 60_000, seed: int = 7, *, batch: int = 512, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(text, image)`` float32 L2-normalised embeddings of ``n`` generated scene/caption pairs.

    Deterministic given ``(n, seed)``; cached as ``.cache/demo-world-{n}-{seed}.npz``.
    """
    path = CACHE / f"demo-world-{n}-{seed}.npz"
    if path.exists():
        with np.load(path) as z:
            return z["text"], z["image"]
    import torch

    from aniso.demo import generate, load_demo_model
    from aniso.demo.train import _normalise

    torch.set_num_threads(threads)
    model, _, tokenizer = load_demo_model("cpu")
    texts, images = [], []
    t0 = time.perf_counter()
    pairs = generate(n, seed)
    with torch.no_grad():
        for start in range(0, n, batch):
            part = [next(pairs) for _ in range(min(batch, n - start))]
            pix = torch.from_numpy(np.stack([np.asarray(p[0], dtype=np.uint8) for p in part])).permute(0, 3, 1, 2)
            images.append(model.encode_image(_normalise(pix), normalize=True).numpy())
            texts.append(model.encode_text(tokenizer([p[1] for p in part]), normalize=True).numpy())
            if start // batch % 20 == 0:
                logger.info("demo world: %d/%d pairs (%.0f s)", start + len(part), n, time.perf_counter() - t0)
    text, image = np.concatenate(texts), np.concatenate(images)
    CACHE.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, text=text, image=image)
    tmp.rename(path)
    return text, image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    text, image = demo_world(args.n, args.seed)
    gap = float(np.linalg.norm(text.astype(np.float64).mean(0) - image.astype(np.float64).mean(0)))
    m = min(1000, args.n)
    r1 = float(np.mean(np.argmax(text[:m] @ image[:m].T, axis=1) == np.arange(m)))
    print(f"demo world: {text.shape[0]} pairs, d={text.shape[1]}, gap {gap:.3f}, R@1 among {m}: {r1:.3f}, "
          f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
