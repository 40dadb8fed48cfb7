"""Shared helpers for the benchmarks: timing, peak memory in a child process, synthetic stores."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def timer(out: dict, key: str):
    start = time.perf_counter()
    yield
    out[key] = time.perf_counter() - start


def best_of(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls (these shared machines are noisy)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run_child(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it must print one JSON line. Adds peak RSS (MiB)."""
    wrapper = (
        "import json, resource, sys\n" + code +
        "\nresult['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps(result))\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def synthetic_store(url: str, n_rows: int, dim: int = 512, shard_rows: int = 65536, seed: int = 0, *,
                    chunk_rows: int = 8192, storage_options: dict | None = None, offset: bool = True,
                    id_of=str) -> str:
    """Write a store of unit-norm random rows shard by shard (never the whole array in memory).

    ``offset``: rows around a common random mean (an anisotropic cloud, as embeddings are), else
    around the origin. ``id_of(row)`` names each row.
    """
    from aniso.io.store import EmbeddingStore

    store = EmbeddingStore.create(url, n_rows=n_rows, dim=dim, chunk_rows=chunk_rows, shard_rows=shard_rows,
                                  storage_options=storage_options or {})
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=dim).astype(np.float32) if offset else None
    for shard in sorted(set(range(store.n_shards)) - store.completed_shards()):
        start, stop = store.shard_range(shard)
        block = rng.normal(size=(stop - start, dim)).astype(np.float32)
        if mean is not None:
            block = block * 0.3 + mean
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        store.write_shard(shard, block, [id_of(i) for i in range(start, stop)])
    return url


def replace_section(path, start: str, end: str, section: str, after: str | None = None) -> None:
    """Put ``section`` (which begins with ``start`` and ends with ``end``) into the page at
    ``path``: in place of the marked section if there is one, else right after the marker
    ``after`` when the page has it, else after the title line."""
    page = path.read_text()
    if start in page and end in page:
        head, rest = page.split(start, 1)
        page = head + section + rest.split(end, 1)[1]
    elif after and after in page:
        head, rest = page.split(after, 1)
        page = head + after + "\n\n" + section + rest
    else:
        title, _, rest = page.partition("\n")
        page = title + "\n\n" + section + "\n" + rest
    path.write_text(page)
