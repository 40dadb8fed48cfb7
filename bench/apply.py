"""Apply throughput vs a plain read → matmul → write, and ``produce`` vs the library calls alone.

Run: ``.venv/bin/python bench/apply.py [--rows 200000] [--method realign] [--repeat 3] [--image-rows N] [--produce]``.
Everything is measured in this process on the same rows, the baseline and the library's apply
alternating (each goes first in turn, after an untimed ``os.sync``), with the same output codec
(the settings' default); figures are ratios, min and median over the repeats (these machines are
noisy). BLAS runs one thread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import _env  # noqa: F401 - before numpy: threads, quiet flows, no analytics

import numpy as np

from _common import synthetic_store

from aniso.stages import apply as apply_stage
from aniso.config import Settings, load_settings
from aniso.methods import get_aligner
from aniso.io.store import EmbeddingStore


def plain_apply(text_url: str, out_url: str, weights: np.ndarray) -> float:
    """Baseline: read each shard, one matmul, write the shard (same zarr geometry)."""
    text = EmbeddingStore.open(text_url)
    out = EmbeddingStore.create(out_url, n_rows=text.n_rows, dim=text.dim, chunk_rows=text.chunk_rows,
                                shard_rows=text.shard_rows, compressor=CODEC)
    start = time.perf_counter()
    for shard in range(text.n_shards):
        emb, ids, _ = text.read_shard(shard)
        out.write_rows(text.shard_range(shard)[0], (emb @ weights).astype(np.float32), list(ids))
    return time.perf_counter() - start


CODEC = Settings().store.compressor


def library_fit(text_url: str, image_url: str, workdir: str, method: str) -> tuple[str, float]:
    """The library's fit called directly (statistics pass, fit, calibration pass): model URL, seconds."""
    start = time.perf_counter()
    aligner = get_aligner(method).fit(EmbeddingStore.open(text_url), EmbeddingStore.open(image_url))
    return aligner.save(f"{workdir}/model"), time.perf_counter() - start


def library_apply(model_url: str, text_url: str, subs: str) -> float:
    """The pipeline's apply (every shard: read, transform, quality stats, write, marker), no orchestrator."""
    start = time.perf_counter()
    pending = apply_stage.prepare_substitutes(subs, text_url, attrs={}, dtype="float32", compressor=CODEC, storage_options={})
    for shard in pending:
        apply_stage.apply_shard(model_url, text_url, subs, shard, {})
    return time.perf_counter() - start


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
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--image-rows", type=int, default=None,
                        help="image rows the model is fitted on (default: --rows; fewer saves disk at 2M rows)")
    parser.add_argument("--produce", action="store_true", help="also time the whole flow against the library calls")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        text_url = synthetic_store(f"{workdir}/text.zarr", args.rows, seed=0)
        image_url = synthetic_store(f"{workdir}/image.zarr", args.image_rows or args.rows, seed=1)
        dim = EmbeddingStore.open(text_url).dim
        weights = np.linalg.qr(np.random.default_rng(0).normal(size=(dim, dim)))[0].astype(np.float32)
        model_url, t_fit = library_fit(text_url, image_url, workdir, args.method)
        runs = {"plain": lambda: plain_apply(text_url, f"{workdir}/plain.zarr", weights),
                "library": lambda: library_apply(model_url, text_url, f"{workdir}/subs.zarr")}
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for rep in range(args.repeat):
            # each goes first in turn, on fresh outputs, and starts with nothing of the other's
            # writes still to flush (os.sync, untimed): the disk's write-back of one run's output
            # otherwise lands in the next run's time, always the same one's
            for name in (("plain", "library") if rep % 2 == 0 else ("library", "plain")):
                for path in (f"{workdir}/plain.zarr", f"{workdir}/subs.zarr", f"{workdir}/subs.zarr.shards"):
                    shutil.rmtree(path, ignore_errors=True)
                os.sync()
                seconds[name].append(runs[name]())
        plain_s, lib_s = seconds["plain"], seconds["library"]
        ratios = [p / q for p, q in zip(plain_s, lib_s)]
        print(f"apply ({args.method}, {args.rows:,} rows, codec {CODEC}, {args.repeat} alternating runs): "
              f"{args.rows / min(lib_s):,.0f} rows/s vs plain read→matmul→write {args.rows / min(plain_s):,.0f} rows/s "
              f"(best runs) → ratio min {min(ratios):.2f} / median {statistics.median(ratios):.2f} (1.0 = as fast as the baseline)")
        if args.produce:
            t_lib = t_fit + min(lib_s)  # fit = statistics pass + fit + calibration pass
            t_first = produce_run(text_url, image_url, f"{workdir}/run1", args.method)
            t_warm = produce_run(text_url, image_url, f"{workdir}/run2", args.method)
            print(f"produce (whole flow, Prefect + Dask, {args.rows:,} rows): first run {t_first:.1f} s (incl. Prefect "
                  f"server start), second run {t_warm:.1f} s vs library calls alone {t_lib:.1f} s → overhead "
                  f"×{t_warm / t_lib:.2f} (warm)")


if __name__ == "__main__":
    main()
