"""The gate stage's wall time as a fraction of the apply stage's, on the same run (goal ≤ 5 %).

Run: ``.venv/bin/python bench/gates.py [--rows 50000 200000] [--dim 512] [--method realign]``.

For each corpus size this builds text/image stores (unit-norm rows with a planted centroid gap),
fits and calibrates the method with the library's stage functions, applies it shard by shard
(the apply stage, timed), then runs :func:`aniso.stages.gate.gate_run` (the gate stage: id checks,
sampled semantic/distribution metrics, great-expectations validation, report) twice: the first
call includes importing great-expectations (once per worker process), the second is the steady
state. Both stages run in this one process, with no Prefect or Dask overhead on either side.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import numpy as np

from aniso.stages import gate as gate_stage
from aniso.stages import apply as apply_stage
from aniso.stages import fit as fit_stage
from aniso.stages import statistics as statistics_stage
from aniso.config import GateSettings
from aniso.io.store import EmbeddingStore


def _store(url: str, n: int, dim: int, shift: np.ndarray, seed: int, shard_rows: int, chunk_rows: int) -> str:
    store = EmbeddingStore.create(url, n_rows=n, dim=dim, chunk_rows=chunk_rows, shard_rows=shard_rows)
    rng = np.random.default_rng(seed)
    for shard in range(store.n_shards):
        start, stop = store.shard_range(shard)
        block = rng.normal(size=(stop - start, dim)).astype(np.float32) * 0.05 + shift
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        store.write_shard(shard, block, [f"r{i}" for i in range(start, stop)])
    return url


def _stats(store_url: str) -> str:
    store = EmbeddingStore.open(store_url)
    parts = [statistics_stage.shard_moments(store_url, s, {}) for s in range(store.n_shards)]
    return statistics_stage.reduce_moments(parts, f"{store_url}/_stats/all.npz", {})


def one_size(base: str, n: int, dim: int, method: str, shard_rows: int, chunk_rows: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    common = rng.normal(size=dim).astype(np.float32)
    text = _store(f"{base}/text.zarr", n, dim, common + 0.6 * rng.normal(size=dim).astype(np.float32), 1,
                  shard_rows, chunk_rows)
    image = _store(f"{base}/image.zarr", n, dim, common + 0.6 * rng.normal(size=dim).astype(np.float32), 2,
                   shard_rows, chunk_rows)
    text_stats, image_stats = _stats(text), _stats(image)
    model = fit_stage.fit_model(f"{base}/model", method, {}, text_stats, image_stats, text, image, seed=0,
                               sample_size=None, storage_options={})
    n_shards = EmbeddingStore.open(text).n_shards
    partials = [fit_stage.calibration_shard(model, text, s, {}) for s in range(n_shards)]
    fit_stage.finish_calibration(model, partials, {})

    subs = f"{base}/substitutes.zarr"
    started = time.perf_counter()
    for shard in apply_stage.prepare_substitutes(subs, text, attrs={}, dtype="float32", compressor="zstd",
                                              storage_options={}):
        apply_stage.apply_shard(model, text, subs, shard, {})
    apply_s = time.perf_counter() - started

    out = {"rows": n, "shards": n_shards, "apply_s": apply_s}
    for label in ("gate_cold_s", "gate_s"):
        started = time.perf_counter()
        result = gate_stage.gate_run(model, text, subs, f"{base}/quality", GateSettings(), {}, image_store_url=image)
        out[label] = time.perf_counter() - started
    out["passed"] = result["passed"]
    out.update({f"t_{k}": v for k, v in result["timings"].items()})
    # as produce runs it: the samples and their metrics prepared (beside apply), then the rest
    started = time.perf_counter()
    sample = gate_stage.prepare_gate_sample(model, text, GateSettings(), {}, image)
    out["prepare_s"] = time.perf_counter() - started
    started = time.perf_counter()
    gate_stage.gate_run(model, text, subs, f"{base}/quality", GateSettings(), {}, image_store_url=image, sample=sample)
    out["gate_after_apply_s"] = time.perf_counter() - started
    started = time.perf_counter()
    gate_stage.gate_run(model, text, subs, f"{base}/quality", GateSettings(report=False), {}, image_store_url=image)
    out["gate_no_report_s"] = time.perf_counter() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--method", default="realign")
    parser.add_argument("--shard-rows", type=int, default=16384)
    parser.add_argument("--chunk-rows", type=int, default=4096)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for n in args.rows:
        with tempfile.TemporaryDirectory(prefix="aniso-bench-gates-") as tmp:
            rows.append(one_size(tmp, n, args.dim, args.method, args.shard_rows, args.chunk_rows))
    print(f"gate stage vs apply stage (method {args.method}, d={args.dim}, shards of {args.shard_rows} rows)")
    print(f"{'rows':>9} {'shards':>6} {'apply s':>8} {'gate s':>7} {'gate/apply':>10} {'cold gate s':>11} "
          f"{'no-report s':>11} {'prepare s':>9} {'after apply s':>13} {'after/apply':>11}  breakdown (steady state, s)")
    for r in rows:
        parts = ", ".join(f"{k[2:]} {v:.2f}" for k, v in r.items() if k.startswith("t_"))
        print(f"{r['rows']:>9} {r['shards']:>6} {r['apply_s']:>8.2f} {r['gate_s']:>7.2f} "
              f"{100 * r['gate_s'] / r['apply_s']:>9.1f}% {r['gate_cold_s']:>11.2f} {r['gate_no_report_s']:>11.2f} "
              f"{r['prepare_s']:>9.2f} {r['gate_after_apply_s']:>13.2f} "
              f"{100 * r['gate_after_apply_s'] / r['apply_s']:>10.1f}%  {parts}")
    print("gate s: the whole gate stage in one call; prepare s: the samples and their metrics, which produce "
          "computes while apply runs; after apply s: the rest (markers, id digests, the sampled substitutes "
          "read back and compared, great-expectations, report).")
    print("goal: gates + report <= 5 % of apply; the gate's cost is a constant (samples of "
          f"{GateSettings().sample_rows} rows, one summary row per shard) while apply grows with the rows.")


if __name__ == "__main__":
    main()
