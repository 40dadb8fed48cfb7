"""Statistics throughput vs numpy's float64 ``XᵀX``, and peak RSS at N and 10·N rows.

Run: ``.venv/bin/python bench/moments.py [--rows 200000]``. Figures are printed as ratios
against a baseline measured in the same process (goal: throughput ratio ≥ 0.8; RSS flat).
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from _common import best_of, run_child, synthetic_store

from aniso.moments import Moments, merge_all


def throughput(rows: int, dim: int = 512, block: int = 65536) -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    blocks = [x[i : i + block] for i in range(0, rows, block)]

    def baseline():  # the plain float64 Gram product of the same rows, block by block
        acc = np.zeros((dim, dim))
        for b in blocks:
            b64 = b.astype(np.float64)
            acc += b64.T @ b64

    def ours():
        merge_all(Moments.from_chunk(b) for b in blocks)

    t_base, t_ours = best_of(baseline), best_of(ours)
    return {"rows": rows, "numpy_rows_per_s": rows / t_base, "aniso_rows_per_s": rows / t_ours,
            "ratio": t_base / t_ours}


def peak_rss(n_rows: int, workdir: str) -> dict:
    url = synthetic_store(f"{workdir}/s{n_rows}.zarr", n_rows)
    return run_child(
        "from aniso.store import EmbeddingStore\nfrom aniso.moments import moments_of\n"
        f"m = moments_of(EmbeddingStore.open({url!r}))\nresult = {{'rows': m.n}}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rss-rows", type=int, default=50_000)
    args = parser.parse_args()
    t = throughput(args.rows)
    print(f"statistics throughput: aniso {t['aniso_rows_per_s']:,.0f} rows/s vs numpy float64 XᵀX "
          f"{t['numpy_rows_per_s']:,.0f} rows/s → ratio {t['ratio']:.2f} (goal ≥ 0.8; rows={t['rows']}, d=512)")
    with tempfile.TemporaryDirectory() as workdir:
        small, large = peak_rss(args.rss_rows, workdir), peak_rss(10 * args.rss_rows, workdir)
    print(f"peak RSS streaming a store: N={small['rows']:,}: {small['peak_rss_mib']:.0f} MiB; "
          f"10·N={large['rows']:,}: {large['peak_rss_mib']:.0f} MiB → ratio {large['peak_rss_mib'] / small['peak_rss_mib']:.2f} "
          "(goal: flat ≈ 1)")


if __name__ == "__main__":
    main()
