"""Fit wall time of AnisoAlign (its closed form) against ReAlign, same rows, same process,
alternating A/B; BLAS threads set explicitly.

    .venv/bin/python bench/fit_cost.py [--n 200000] [--d 512] [--repeat 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--n", type=int, default=200_000, help="rows per modality")
ap.add_argument("--d", type=int, default=512)
ap.add_argument("--repeat", type=int, default=2)
ap.add_argument("--threads", type=int, default=1)
args = ap.parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aniso.methods import get_aligner  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(64, args.d)).astype(np.float32)
    text = (rng.normal(size=(args.n, 64)).astype(np.float32) @ basis + 3.0)
    image = (rng.normal(size=(args.n, 64)).astype(np.float32) @ (basis * 1.3) - 3.0)
    image += 0.3 * rng.normal(size=image.shape).astype(np.float32)
    times: dict[str, list[float]] = {"realign": [], "anisoalign": []}
    cpu: dict[str, list[float]] = {"realign": [], "anisoalign": []}
    for _ in range(args.repeat):
        for name in ("realign", "anisoalign"):
            t0, c0 = time.perf_counter(), time.process_time()
            get_aligner(name).fit(text, image)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    ratio = min(times["anisoalign"]) / min(times["realign"])
    print(f"fit {args.n:,}+{args.n:,} rows, d={args.d}, threads={args.threads}: AnisoAlign min {min(times['anisoalign']):.1f} s (median "
          f"{float(np.median(times['anisoalign'])):.1f}), ReAlign min {min(times['realign']):.1f} s; ratio {ratio:.2f}; CPU time AnisoAlign "
          f"{min(cpu['anisoalign']):.1f} s, ReAlign {min(cpu['realign']):.1f} s (wall ≫ CPU means the machine was loaded)")


if __name__ == "__main__":
    main()
