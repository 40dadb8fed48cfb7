"""A nightly frozen-model run on a grown corpus vs a full ``produce`` on the same inputs.

Run: ``.venv/bin/python bench/incremental.py [--rows 196608] [--grow 0.1] [--repeat 2] [--method anisoalign]``.

Both runs are the whole ``produce`` flow in this process (Prefect + a local Dask cluster, the
default profile: chunks of 4,096 rows, shards of 65,536), alternating, each on a fresh root; the
full run is cold (the statistics cached beside its inputs are removed first):

* **full**: ``produce`` on the grown corpus (``rows × (1 + grow)`` text rows): statistics, fit,
  calibration, apply, gates, publication;
* **incremental**: on a root where version 1 was published from the first ``rows`` rows (not
  timed), ``produce --model latest`` on the same grown corpus: no statistics or fit; the shards
  whose input is unchanged are carried over (hard links), the rest applied; gates; publication.

It prints the wall times, their ratio (target ≤ 0.25) and checks that every row of version 1 kept
its bits in the incremental version.

``--drift`` instead prints the ``input_drift`` gate's figures (``aniso/quality/drift.py``, bounds in
``conf/gates.yaml``) on real CLIP sets from a ``shared/data`` folder beside the checkout: a model
and its reference fitted on the first half of Flickr8k-500's captions and its 100 images, then (a) the
same corpus's next snapshot (all 500 captions) and (b) another set's captions (COCO-500). ``rows`` should be a multiple of 65,536 for the old rows to
fill whole shards (an appended corpus); otherwise the old partial shard is recomputed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import _env  # noqa: F401 - before numpy: threads, quiet flows, no analytics

from _common import synthetic_store

from aniso.config import load_settings
from aniso.published.dataset import open_published


def produce_run(text_url: str, image_url: str, root: str, *sets: str) -> tuple[float, dict]:
    """Wall time of one whole ``produce`` flow and its result."""
    from aniso.flows._common import make_task_runner
    from aniso.flows.produce import produce

    settings = load_settings(overrides=[f"storage.root={root}", "storage.dataset=bench", *sets], environ={})
    start = time.perf_counter()
    result = produce.with_options(task_runner=make_task_runner(settings.cluster))(
        text=text_url, image=image_url, settings=settings)
    return time.perf_counter() - start, result


def drift_figures() -> None:
    """The drift gate's figures on the next snapshot of a corpus and on another set's captions."""
    from pathlib import Path

    import numpy as np

    from aniso.methods import CentroidShift
    from aniso.quality.drift import drift_metrics, judge_drift, load_drift_bounds, reference_from

    data = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    flickr, coco = data / "flickr8k-clip-vitb32", data / "mind-the-gap-coco500" / "features_clip.npy"
    if not flickr.exists() or not coco.exists():
        print(f"skipped: {flickr} or {coco} absent")
        return
    text, image = np.load(flickr / "text_embeddings.npy"), np.load(flickr / "image_embeddings.npy")
    half = text.shape[0] // 2
    bounds = load_drift_bounds()
    model = CentroidShift().fit(text[:half], image)  # the image corpus stays; the captions grow
    reference = reference_from(text[:half], image, int(bounds["top_k"]))
    cases = {"next snapshot (Flickr8k, all 500 captions)": text,
             "another set's captions (COCO-500, CLIP ViT-B/16)": np.load(coco)[1]}
    for name, new_text in cases.items():
        results = judge_drift(drift_metrics(reference, model.mu_text, model.mu_image, new_text, image), bounds)
        verdict = "passes" if all(r["passed"] for r in results) else "FAILS"
        print(f"{name}: {verdict} - " + ", ".join(
            f"{r['name'].split(':')[1]} {r['observed']:.3f} ({r['bound']})" for r in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drift", action="store_true", help="print the input_drift gate's figures instead")
    parser.add_argument("--rows", type=int, default=196_608)
    parser.add_argument("--grow", type=float, default=0.1)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--method", default="anisoalign")
    args = parser.parse_args()
    if args.drift:
        drift_figures()
        return
    grown = int(args.rows * (1 + args.grow))
    with tempfile.TemporaryDirectory() as work:
        # the same generator draws shard by shard: the first rows of the grown corpus are the old corpus
        old = synthetic_store(f"{work}/text-old.zarr", args.rows, args.dim, seed=0, id_of=lambda i: f"cap-{i}")
        new = synthetic_store(f"{work}/text-new.zarr", grown, args.dim, seed=0, id_of=lambda i: f"cap-{i}")
        image = synthetic_store(f"{work}/image.zarr", grown, args.dim, seed=1)
        produce_run(old, image, f"{work}/warm", f"method.name={args.method}")  # Prefect server, imports
        full_s, incr_s, ratios = [], [], []
        for rep in range(args.repeat):
            for store in (new, image):  # a cold full run: its input statistics are not reused
                shutil.rmtree(f"{store}/_stats", ignore_errors=True)
            t_full, _ = produce_run(new, image, f"{work}/full{rep}", f"method.name={args.method}")
            produce_run(old, image, f"{work}/incr{rep}", f"method.name={args.method}")  # version 1, not timed
            t_incr, result = produce_run(new, image, f"{work}/incr{rep}", "method.model=latest")
            full_s.append(t_full)
            incr_s.append(t_incr)
            ratios.append(t_incr / t_full)
            print(f"rep {rep}: full produce {t_full:.1f} s, frozen-model incremental {t_incr:.1f} s "
                  f"-> {t_incr / t_full:.3f}", flush=True)
        v2 = open_published(f"{work}/incr0", "bench", lease_s=None)
        versions = sorted(os.listdir(f"{work}/incr0/bench/published"))
        v1 = open_published(f"{work}/incr0", "bench", version=[v for v in versions if v != "LATEST"][0], lease_s=None)
        same = v2.embedding[: args.rows].tobytes() == v1.embedding[:].tobytes()
        inc = v2.manifest["lineage"]["incremental"]
        print(f"incremental ({args.method} model, {args.rows:,} + {grown - args.rows:,} rows, d={args.dim}, "
              f"{args.repeat} alternating reps): {inc['carried_shards']} shard(s) carried ({inc['carried_rows']:,} rows), "
              f"{inc['applied_shards']} applied ({inc['applied_rows']:,} rows); wall min {min(incr_s):.1f} s vs full "
              f"produce min {min(full_s):.1f} s -> ratio min {min(ratios):.3f} / median {statistics.median(ratios):.3f} "
              f"(target <= 0.25); old rows bit-identical: {same}")


if __name__ == "__main__":
    main()
