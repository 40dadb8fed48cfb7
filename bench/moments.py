"""Statistics throughput vs plain numpy on the same arithmetic, and peak RSS at N and 10·N rows.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/moments.py [--rows 200000]``. Figures are ratios
against baselines measured in the same process, alternated (goal: ≥ 0.9 on the same arithmetic):

* full statistics (what the pipeline computes: float32 normalise/centre, float32 Gram blocks of
  4,096 rows summed in float64) vs numpy doing exactly that on the same rows, and vs numpy's
  float64 ``XᵀX`` (the previous arithmetic);
* trace-only statistics (ReAlign) vs numpy's float32 normalise + ``Σ‖x − μ‖²``.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from _common import best_of, run_child, synthetic_store

from aniso.numeric.moments import F32_BLOCK, Moments, merge_all


def throughput(rows: int, dim: int = 512, block: int = 65536, repeat: int = 3) -> dict:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(rows, dim)) * 0.3 + rng.normal(size=dim)).astype(np.float16)
    blocks = [x[i : i + block] for i in range(0, rows, block)]

    def numpy_f64():  # the plain float64 Gram product of the same rows, block by block
        acc = np.zeros((dim, dim))
        for b in blocks:
            b64 = b.astype(np.float64)
            acc += b64.T @ b64

    def numpy_f32(full: bool = True):  # the same arithmetic as ours, written plainly
        acc, ss = np.zeros((dim, dim)), 0.0
        for b in blocks:
            b32 = b.astype(np.float32)
            b32 /= np.sqrt(np.einsum("ij,ij->i", b32, b32))[:, None]
            b32 -= b32.mean(axis=0, dtype=np.float64).astype(np.float32)
            for i in range(0, b32.shape[0], F32_BLOCK):
                c = b32[i : i + F32_BLOCK]
                if full:
                    acc += c.T @ c
                else:
                    ss += float(np.einsum("ij,ij->", c, c, dtype=np.float64))

    def ours(full: bool = True):
        merge_all(Moments.from_chunk(b, full=full, products="float32") for b in blocks)

    times: dict[str, list[float]] = {k: [] for k in ("numpy_f64", "numpy_f32", "ours", "numpy_trace", "ours_trace")}
    for _ in range(repeat):  # alternated
        times["numpy_f64"].append(best_of(numpy_f64, 1))
        times["numpy_f32"].append(best_of(numpy_f32, 1))
        times["ours"].append(best_of(ours, 1))
        times["numpy_trace"].append(best_of(lambda: numpy_f32(False), 1))
        times["ours_trace"].append(best_of(lambda: ours(False), 1))
    t = {k: min(v) for k, v in times.items()}
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"rows": rows, "rows_per_s": {k: rows / v for k, v in t.items()},
            "ratio_same": t["numpy_f32"] / t["ours"], "ratio_same_median": med["numpy_f32"] / med["ours"],
            "ratio_f64": t["numpy_f64"] / t["ours"], "ratio_trace": t["numpy_trace"] / t["ours_trace"],
            "ratio_trace_median": med["numpy_trace"] / med["ours_trace"]}


def peak_rss(n_rows: int, workdir: str) -> dict:
    url = synthetic_store(f"{workdir}/s{n_rows}.zarr", n_rows)
    return run_child(
        "from aniso.io.store import EmbeddingStore\nfrom aniso.numeric.moments import moments_of\n"
        f"m = moments_of(EmbeddingStore.open({url!r}))\nresult = {{'rows': m.n}}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rss-rows", type=int, default=50_000)
    args = parser.parse_args()
    t = throughput(args.rows)
    r = t["rows_per_s"]
    print(f"full statistics: aniso {r['ours']:,.0f} rows/s vs numpy, same arithmetic {r['numpy_f32']:,.0f} rows/s → "
          f"ratio {t['ratio_same']:.2f} (min) / {t['ratio_same_median']:.2f} (median) (goal ≥ 0.9); vs numpy float64 XᵀX "
          f"{r['numpy_f64']:,.0f} rows/s → {t['ratio_f64']:.2f} (rows={t['rows']}, d=512, fp16 input)")
    print(f"trace statistics (ReAlign): aniso {r['ours_trace']:,.0f} rows/s vs numpy same arithmetic "
          f"{r['numpy_trace']:,.0f} rows/s → ratio {t['ratio_trace']:.2f} (min) / {t['ratio_trace_median']:.2f} (median)")
    with tempfile.TemporaryDirectory() as workdir:
        small, large = peak_rss(args.rss_rows, workdir), peak_rss(10 * args.rss_rows, workdir)
    print(f"peak RSS streaming a store: N={small['rows']:,}: {small['peak_rss_mib']:.0f} MiB; "
          f"10·N={large['rows']:,}: {large['peak_rss_mib']:.0f} MiB → ratio {large['peak_rss_mib'] / small['peak_rss_mib']:.2f} "
          "(goal: flat ≈ 1)")


if __name__ == "__main__":
    main()
