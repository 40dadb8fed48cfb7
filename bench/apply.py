"""Apply throughput vs a plain read → matmul → write, and ``produce`` vs the library calls alone.

Run: ``.venv/bin/python bench/apply.py [--rows 200000] [--method realign]``. Everything is
measured in this process on the same rows; figures are ratios (these machines are noisy).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

import numpy as np

from _common import synthetic_store

from aniso import pipeline
from aniso.config import load_settings
from aniso.methods import get_aligner
from aniso.store import EmbeddingStore


def plain_apply(text_url: str, out_url: str, weights: np.ndarray) -> float:
    """Baseline: read each shard, one matmul, write the shard (same zarr geometry)."""
    text = EmbeddingStore.open(text_url)
    out = EmbeddingStore.create(out_url, n_rows=text.n_rows, dim=text.dim, chunk_rows=text.chunk_rows,
                                shard_rows=text.shard_rows)
    start = time.perf_counter()
    for shard in range(text.n_shards):
        emb, ids, _ = text.read_shard(shard)
        out.write_rows(text.shard_range(shard)[0], (emb @ weights).astype(np.float32), list(ids))
    return time.perf_counter() - start


def library_apply(text_url: str, image_url: str, workdir: str, method: str) -> dict:
    """The library's stages called directly, no orchestrator: fit, calibrate, apply."""
    times = {}
    start = time.perf_counter()
    aligner = get_aligner(method).fit(EmbeddingStore.open(text_url), EmbeddingStore.open(image_url))
    model_url = aligner.save(f"{workdir}/model")
    times["fit"] = time.perf_counter() - start
    subs = f"{workdir}/subs.zarr"
    start = time.perf_counter()
    pending = pipeline.prepare_substitutes(subs, text_url, attrs={}, dtype="float32", compressor="zstd", storage_options={})
    for shard in pending:
        pipeline.apply_shard(model_url, text_url, subs, shard, {})
    times["apply"] = time.perf_counter() - start
    return times


def produce_run(text_url: str, image_url: str, root: str, method: str) -> float:
    from aniso.flows._common import make_task_runner
    from aniso.flows.produce import produce

    settings = load_settings(overrides=[f"storage.root={root}", f"method.name={method}"], environ={})
    start = time.perf_counter()
    produce.with_options(task_runner=make_task_runner(settings.cluster))(text=text_url, image=image_url, settings=settings)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--method", default="realign")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        text_url = synthetic_store(f"{workdir}/text.zarr", args.rows, seed=0)
        image_url = synthetic_store(f"{workdir}/image.zarr", args.rows, seed=1)
        dim = EmbeddingStore.open(text_url).dim
        weights = np.linalg.qr(np.random.default_rng(0).normal(size=(dim, dim)))[0].astype(np.float32)
        t_plain = plain_apply(text_url, f"{workdir}/plain.zarr", weights)
        lib = library_apply(text_url, image_url, workdir, args.method)
        print(f"apply ({args.method}): {args.rows / lib['apply']:,.0f} rows/s vs plain read→matmul→write "
              f"{args.rows / t_plain:,.0f} rows/s → ratio {t_plain / lib['apply']:.2f} (1.0 = as fast as the baseline)")
        t_lib = lib["fit"] + lib["apply"]  # fit = statistics pass + fit + calibration pass
        t_first = produce_run(text_url, image_url, f"{workdir}/run1", args.method)
        t_warm = produce_run(text_url, image_url, f"{workdir}/run2", args.method)
        print(f"produce (whole flow, Prefect + Dask, {args.rows:,} rows): first run {t_first:.1f} s (incl. Prefect "
              f"server start), second run {t_warm:.1f} s vs library calls alone {t_lib:.1f} s → overhead "
              f"×{t_warm / t_lib:.2f} (warm)")


if __name__ == "__main__":
    main()
