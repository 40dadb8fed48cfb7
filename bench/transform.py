"""AnisoAlign transform throughput vs a plain ``X @ W``; fit time and peak RSS at N and 10·N.

    .venv/bin/python bench/transform.py [--n 20000] [--d 512]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(64, d)) / np.sqrt(d)
    z = rng.normal(size=(n, 64)) * np.linspace(1, 0.2, 64)
    text = z @ basis + 0.02 * rng.normal(size=(n, d)) + 0.6 * np.eye(d)[0]
    image = z @ basis * 1.2 + 0.05 * rng.normal(size=(n, d)) + 0.6 * np.eye(d)[1]
    return text.astype(np.float32), image.astype(np.float32)


def fit_child(n: int, d: int) -> None:
    from aniso.methods import AnisoAlign

    text, image = synthetic(n, d, 0)
    t0 = time.perf_counter()
    AnisoAlign().fit(text, image)
    fit_s = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n},{fit_s:.2f},{rss:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--child", type=int, help="(internal) fit on this many rows and print time and peak RSS")
    args = ap.parse_args()
    if args.child:
        fit_child(args.child, args.d)
        return
    from aniso.methods import AnisoAlign

    text, image = synthetic(args.n, args.d, 0)
    m = AnisoAlign().fit(text, image)
    x = text[: min(args.n, 20000)]
    w = np.random.default_rng(1).normal(size=(args.d, args.d)).astype(np.float32)
    reps = 3
    t0 = time.perf_counter()
    for _ in range(reps):
        m.transform(x)
    t_aniso = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        _ = x @ w
    t_mm = (time.perf_counter() - t0) / reps
    print(f"transform {x.shape[0] / t_aniso:,.0f} rows/s; X@W (float32) "
          f"{x.shape[0] / t_mm:,.0f} rows/s; ratio {t_aniso / t_mm:.1f}x slower")
    for n in (args.n, 10 * args.n):
        out = subprocess.run([sys.executable, __file__, "--d", str(args.d), "--child", str(n)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        n_, fit_s, rss = out.split(",")
        print(f"fit N={int(n_):,}: {fit_s} s, peak RSS {rss} MiB")


if __name__ == "__main__":
    main()
