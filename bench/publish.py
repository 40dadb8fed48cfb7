"""Cost of making a version self-contained (hard links / server-side copy) against the apply stage.

Run: ``nice -n 5 .venv/bin/python bench/publish.py [--rows 262144] [--dim 512] [--repeat 3]``.

For each backend (a local directory, the loopback S3 server): write a text store, fit ReAlign,
run the apply stage (``apply_stage.apply_shard`` for every shard, as the flow's tasks do), then
``publish`` (which links or copies the substitutes into ``published/<version>/data.zarr``).
Reps alternate apply and publish on fresh run keys; the figure is publish time / apply time
(min and median over reps).
"""

from __future__ import annotations

import argparse
import os

import _env  # noqa: E402,F401 - before numpy: one BLAS thread (bench/_env.py)
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import logging
import statistics
import tempfile
import time


from aniso.stages import apply as apply_stage
from aniso._fs import join_url
from aniso.io.layout import DatasetLayout
from aniso.methods import get_aligner
from aniso.published.writer import publish
from aniso.io.store import EmbeddingStore
from _common import synthetic_store


def text_store(url: str, options: dict, n_rows: int, dim: int, shard_rows: int) -> str:
    return synthetic_store(url, n_rows, dim, shard_rows, chunk_rows=4096, storage_options=options, offset=False,
                           id_of=lambda i: f"t{i}")


def measure(name: str, root: str, options: dict, args: argparse.Namespace) -> None:
    layout = DatasetLayout(root, "bench")
    text = text_store(join_url(layout.base, "embeddings", "in", "text.zarr"), options, args.rows, args.dim, args.shard_rows)
    store = EmbeddingStore.open(text, storage_options=options)
    aligner = get_aligner("realign").fit(store, store)
    model = aligner.save(join_url(layout.base, "model"), options)
    ratios, applies, publishes = [], [], []
    for rep in range(args.repeat):
        key = f"benchrun{rep:04d}abcd"
        subs = layout.substitutes(key)
        t0 = time.perf_counter()
        for shard in apply_stage.prepare_substitutes(subs, text, attrs={}, dtype="float32", compressor="zstd",
                                                  storage_options=options):
            apply_stage.apply_shard(model, text, subs, shard, options)
        applies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pointer = publish(layout, key, gate_results={}, lineage={}, storage_options=options)
        publishes.append(time.perf_counter() - t0)
        ratios.append(publishes[-1] / applies[-1])
    print(f"{name:>6}: publish {statistics.median(publishes):.2f} s vs apply {statistics.median(applies):.2f} s "
          f"(medians, {args.rows:,} rows x {args.dim}) -> publish/apply min {min(ratios):.3f}, median "
          f"{statistics.median(ratios):.3f}; last version {pointer['version']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=262144)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shard-rows", type=int, default=65536)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-s3", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        measure("local", os.path.join(tmp, "root"), {}, args)
    if args.skip_s3:
        return
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        options = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
        s3fs.S3FileSystem(**options).mkdir("bench")
        measure("s3", "s3://bench/root", options, args)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
