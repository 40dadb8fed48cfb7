"""Fit wall time of AnisoAlign (the default, with the matched refinement, and its closed form
alone) against ReAlign, same rows, same process, alternating; BLAS threads set explicitly.

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
    runs = {"realign": ("realign", {}), "anisoalign": ("anisoalign", {}),
            "anisoalign closed form": ("anisoalign", {"match_rows": 0})}
    times: dict[str, list[float]] = {label: [] for label in runs}
    cpu: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(args.repeat):
        for label, (name, params) in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            get_aligner(name, **params).fit(text, image)
            times[label].append(time.perf_counter() - t0)
            cpu[label].append(time.process_time() - c0)
    print(f"fit {args.n:,}+{args.n:,} rows, d={args.d}, threads={args.threads} (wall ≫ CPU means the machine was loaded):")
    for label in runs:
        print(f"  {label}: min {min(times[label]):.1f} s, median {float(np.median(times[label])):.1f} s wall "
              f"({min(times[label]) / min(times['realign']):.2f}× ReAlign); CPU {min(cpu[label]):.1f} s")


if __name__ == "__main__":
    main()
