"""Training loader throughput vs reading the same chunks directly with zarr, local and loopback S3.

Run: ``nice -n 5 .venv/bin/python bench/loader.py [--rows 131072] [--dim 256] [--repeat 3] [--check]``.

A: ``PublishedDataLoader(PublishedIterableDataset(..., batch_size=1024, shuffle=True),
num_workers=2)``: a ``torch.utils.data.DataLoader`` with 2 spawned, persistent workers that move
whole 4,096-row blocks to the main process, which cuts them into 1,024-row batches; one epoch per
rep (reshuffled), as a training job runs. ``--plain`` also measures the dataset in a bare
``DataLoader(ds, batch_size=None, ...)`` (one transfer per batch).
B (baseline): one process reading every chunk of ``embedding`` and ``id`` with zarr, in order.
Reps alternate A/B; the ratio is rows/s of A over rows/s of B (min and median over reps). The
first epoch, which includes starting the workers and their opening the store, is reported apart.

``--check`` measures what checking every chunk against the manifest's per-chunk digests costs
(``aniso.published.checked``): A = checked, B = unchecked (``digests=None`` /
``check_chunks=False``), alternating in one run, for ``iter_batches`` in one process and for the
2-worker loader; the ratio is checked rows/s over unchecked rows/s (min and median; the bound is
0.90, a cost of at most 10%).

``--global-shuffle`` measures what ``shuffle="global"`` (every batch drawn from every chunk of the
epoch: the whole share read, then one permutation) costs against the buffered ``shuffle=True``
(4-chunk buffer): ``iter_batches`` in one process, A = global, B = buffered, alternating; the
ratio is global rows/s over buffered rows/s, with the time to the first batch of each.
"""

from __future__ import annotations

import argparse
import os

import _env  # noqa: E402,F401 - before numpy: one BLAS thread (bench/_env.py)
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import statistics
import tempfile
import time

import torch

from aniso.io.layout import DatasetLayout
from aniso.published.dataset import open_published
from aniso.published.writer import publish
from aniso.published.torch_loader import PublishedDataLoader, PublishedIterableDataset
from _common import synthetic_store


def make_dataset(root: str, options: dict, n_rows: int, dim: int, chunk_rows: int, shard_rows: int) -> None:
    layout = DatasetLayout(root, "bench")
    synthetic_store(layout.substitutes("benchkey00000"), n_rows, dim, shard_rows, chunk_rows=chunk_rows,
                    storage_options=options, offset=False, id_of=lambda i: f"item-{i:09d}")
    publish(layout, "benchkey00000", gate_results={}, lineage={}, storage_options=options)


def direct_zarr(root: str, options: dict) -> int:
    """Baseline: every chunk of embedding and id, read with zarr in one process."""
    group = open_published(root, "bench", storage_options=options).store.group
    emb, ids = group["embedding"], group["id"]
    n, step = emb.shape[0], emb.chunks[0]
    rows = 0
    for lo in range(0, n, step):
        block, names = emb[lo : lo + step], ids[lo : lo + step]
        rows += len(block) + 0 * len(names)
    return rows


def epoch(batches) -> int:
    rows = 0
    for ids, emb in batches:
        rows += emb.shape[0] + 0 * len(ids)
    return rows


def measure(name: str, root: str, options: dict, n_rows: int, repeat: int, batch_size: int,
            plain: bool = False) -> dict:
    """First epoch (worker start-up included), then ``repeat`` steady-state epochs alternating with B."""
    ds = PublishedIterableDataset(root, "bench", batch_size=batch_size, storage_options=options, shuffle=True)
    if plain:
        name = f"{name} (plain DataLoader)"
        batches = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True,
                                              multiprocessing_context="spawn")
    else:
        batches = PublishedDataLoader(ds, num_workers=2)
    t0 = time.perf_counter()
    assert epoch(batches) == n_rows
    first = n_rows / (time.perf_counter() - t0)
    ratios, a_rates, b_rates = [], [], []
    for rep in range(repeat):
        t0 = time.perf_counter()
        rows_a = epoch(batches)
        ta = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows_b = direct_zarr(root, options)
        tb = time.perf_counter() - t0
        assert rows_a == rows_b == n_rows, (rows_a, rows_b)
        a_rates.append(rows_a / ta)
        b_rates.append(rows_b / tb)
        ratios.append(a_rates[-1] / b_rates[-1])
    zarr_rate = statistics.median(b_rates)
    result = {"backend": name, "loader_rows_s": round(statistics.median(a_rates)), "zarr_rows_s": round(zarr_rate),
              "ratio_min": round(min(ratios), 2), "ratio_median": round(statistics.median(ratios), 2),
              "first_epoch_rows_s": round(first), "first_epoch_ratio": round(first / zarr_rate, 2)}
    print(f"{name:>6}: 2-worker loader {result['loader_rows_s']:,} rows/s vs direct zarr "
          f"{result['zarr_rows_s']:,} rows/s (medians) -> ratio min {result['ratio_min']}, median "
          f"{result['ratio_median']}; first epoch incl. worker start-up {result['first_epoch_rows_s']:,} rows/s "
          f"(ratio {result['first_epoch_ratio']})", flush=True)
    return result


def measure_check(name: str, root: str, options: dict, n_rows: int, repeat: int, batch_size: int) -> dict:
    """Checked vs unchecked reads, alternating: ``iter_batches`` in one process, then the loader."""
    ds = open_published(root, "bench", storage_options=options, lease_s=None)
    single = {True: lambda: epoch(ds.iter_batches(batch_size, shuffle=True)),
              False: lambda: epoch(ds.iter_batches(batch_size, shuffle=True, digests=None))}
    loaders = {check: PublishedDataLoader(PublishedIterableDataset(
        root, "bench", batch_size=batch_size, storage_options=options, shuffle=True, check_chunks=check), num_workers=2)
        for check in (True, False)}
    result = {"backend": name}
    for what, runs in (("iter_batches", single), ("loader", {k: (lambda l=l: epoch(l)) for k, l in loaders.items()})):
        for check in (True, False):  # warm-up: worker start-up, first open, page cache
            assert runs[check]() == n_rows
        rates: dict[bool, list[float]] = {True: [], False: []}
        cpu: dict[bool, list[float]] = {True: [], False: []}  # this process's CPU: immune to other load
        for rep in range(repeat):
            for check in ((True, False) if rep % 2 == 0 else (False, True)):
                t0, c0 = time.perf_counter(), time.process_time()
                assert runs[check]() == n_rows
                rates[check].append(n_rows / (time.perf_counter() - t0))
                cpu[check].append(time.process_time() - c0)
        ratios = [a / b for a, b in zip(rates[True], rates[False])]
        result[what] = {"checked_rows_s": round(statistics.median(rates[True])),
                        "unchecked_rows_s": round(statistics.median(rates[False])),
                        "ratio_min": round(min(ratios), 3), "ratio_median": round(statistics.median(ratios), 3)}
        r = result[what]
        line = (f"{name:>6} {what}: checked {r['checked_rows_s']:,} rows/s vs unchecked {r['unchecked_rows_s']:,} "
                f"rows/s (medians) -> ratio min {r['ratio_min']}, median {r['ratio_median']}")
        if what == "iter_batches":  # all its work is in this process: its CPU seconds compare cleanly
            r["cpu_ratio_median"] = round(statistics.median(cpu[False]) / statistics.median(cpu[True]), 3)
            line += f"; CPU-time ratio (unchecked/checked, medians) {r['cpu_ratio_median']}"
        print(line, flush=True)
    return result


def measure_global(name: str, root: str, options: dict, n_rows: int, repeat: int, batch_size: int) -> dict:
    """``shuffle="global"`` vs ``shuffle=True`` epochs of ``iter_batches``, alternating."""
    ds = open_published(root, "bench", storage_options=options, lease_s=None)
    modes = {"global": "global", "buffered": True}
    rates: dict[str, list[float]] = {m: [] for m in modes}
    first: dict[str, list[float]] = {m: [] for m in modes}
    for mode in modes:  # warm-up: first open, page cache
        assert epoch(ds.iter_batches(batch_size, shuffle=modes[mode])) == n_rows
    for rep in range(repeat):
        for mode in (("global", "buffered") if rep % 2 == 0 else ("buffered", "global")):
            t0 = time.perf_counter()
            rows, t_first = 0, None
            for ids, emb in ds.iter_batches(batch_size, shuffle=modes[mode], epoch=rep):
                t_first = t_first if t_first is not None else time.perf_counter() - t0
                rows += emb.shape[0] + 0 * len(ids)
            assert rows == n_rows
            rates[mode].append(rows / (time.perf_counter() - t0))
            first[mode].append(t_first)
    ratios = [a / b for a, b in zip(rates["global"], rates["buffered"])]
    result = {"backend": name, **{f"{m}_rows_s": round(statistics.median(rates[m])) for m in modes},
              **{f"{m}_first_batch_s": round(statistics.median(first[m]), 3) for m in modes},
              "ratio_min": round(min(ratios), 3), "ratio_median": round(statistics.median(ratios), 3)}
    print(f"{name:>6} iter_batches: global shuffle {result['global_rows_s']:,} rows/s vs buffered "
          f"{result['buffered_rows_s']:,} rows/s (medians) -> ratio min {result['ratio_min']}, median "
          f"{result['ratio_median']}; first batch after {result['global_first_batch_s']} s vs "
          f"{result['buffered_first_batch_s']} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=131072)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--chunk-rows", type=int, default=4096)
    parser.add_argument("--shard-rows", type=int, default=65536)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--plain", action="store_true", help="also measure a bare DataLoader over the dataset")
    parser.add_argument("--check", action="store_true", help="measure checked vs unchecked chunk reads instead")
    parser.add_argument("--global-shuffle", action="store_true",
                        help="measure shuffle='global' vs the buffered shuffle instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.rows} rows x {args.dim} float32, chunks of {args.chunk_rows}, shards of {args.shard_rows}; "
          f"batch {args.batch_size}; {args.repeat} alternating reps", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "root")
        make_dataset(root, {}, args.rows, args.dim, args.chunk_rows, args.shard_rows)
        if args.global_shuffle:
            measure_global("local", root, {}, args.rows, args.repeat, args.batch_size)
        elif args.check:
            measure_check("local", root, {}, args.rows, args.repeat, args.batch_size)
        else:
            measure("local", root, {}, args.rows, args.repeat, args.batch_size)
        if args.plain:
            measure("local", root, {}, args.rows, args.repeat, args.batch_size, plain=True)
    if args.skip_s3:
        return
    import logging

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        options = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
        s3fs.S3FileSystem(**options).mkdir("bench")
        make_dataset("s3://bench/root", options, args.rows, args.dim, args.chunk_rows, args.shard_rows)
        if args.global_shuffle:
            measure_global("s3", "s3://bench/root", options, args.rows, args.repeat, args.batch_size)
            return
        if args.check:
            measure_check("s3", "s3://bench/root", options, args.rows, args.repeat, args.batch_size)
            return
        measure("s3", "s3://bench/root", options, args.rows, args.repeat, args.batch_size)
        if args.plain:
            measure("s3", "s3://bench/root", options, args.rows, args.repeat, args.batch_size, plain=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
