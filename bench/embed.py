"""Benchmark the embed path against a bare loop calling the same model on the same batches.

    python bench/embed.py [--n 2048] [--items-per-shard 512] [--batch-size 128] [--model aniso-demo-tiny]
        [--device cpu|cuda|auto] [--precision auto|fp32|fp16|bf16]

On a GPU (``--device cuda``; see docs/performance.md, "GPU plan") the bare loop moves each batch
to the device in the model's dtype, exactly as the pipeline's encoder does.

Writes a demo captioned corpus to a temporary folder, then for images and texts:

* **pipeline**: ``plan_shards`` → ``embed_shard`` per shard (read, decode on a thread pool, encode)
  → ``EmbeddingStore.write_shard`` (zarr, with completion markers), as the embed flow does;
* **bare loop**: one process, the same files and batch size: read → decode → preprocess →
  ``model.encode_*`` → L2-normalise, nothing else.

Prints items/s of both, their ratio (pipeline / bare; 1.0 = no overhead) and the share of the
pipeline's time per stage (read / decode / encode / write). Not part of the test run.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from aniso.config import CorpusSettings, EmbedSettings, Settings
from aniso.corpus import plan_shards
from aniso.demo.scenes import write_demo_corpus
from aniso.encode import embed_shard, get_encoder


def _pipeline(url: str, modality: str, settings: Settings, out: str) -> tuple[float, dict[str, float]]:
    from aniso.io.store import EmbeddingStore

    t0 = time.perf_counter()
    specs = plan_shards(url, settings.corpus, modality=modality)
    n = sum(s.n_items for s in specs)
    enc = get_encoder(settings.embed)
    store = EmbeddingStore.create(out, n_rows=n, dim=enc.dim, chunk_rows=settings.corpus.items_per_shard,
                                  shard_rows=settings.corpus.items_per_shard)
    stages = {"read": 0.0, "decode": 0.0, "encode": 0.0, "write": 0.0}
    for spec in specs:
        result = embed_shard(spec, settings)
        t1 = time.perf_counter()
        store.write_shard(spec.index, result.embeddings, result.ids, valid=result.valid, stats=result.timings)
        stages["write"] += time.perf_counter() - t1
        stages["read"] += result.timings["read"]
        stages["decode"] += result.timings.get("decode_wait", 0.0)
        stages["encode"] += result.timings["encode"]
    stages["plan+other"] = max(0.0, time.perf_counter() - t0 - sum(stages.values()))
    return time.perf_counter() - t0, stages


def _bare_images(paths: list[Path], settings: EmbedSettings) -> float:
    enc = get_encoder(settings)
    model, preprocess = enc.model, enc.preprocess
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(paths), settings.batch_size):
            batch = [preprocess(Image.open(io.BytesIO(p.read_bytes())).convert("RGB")) for p in paths[start : start + settings.batch_size]]
            pixels = torch.stack(batch).to(enc.key.device, dtype=next(model.parameters()).dtype, non_blocking=True)
            F.normalize(model.encode_image(pixels).float(), dim=-1).cpu().numpy()
    return time.perf_counter() - t0


def _bare_texts(jsonl: Path, settings: EmbedSettings) -> float:
    enc = get_encoder(settings)
    t0 = time.perf_counter()
    texts = [json.loads(line)["text"] for line in jsonl.read_text().splitlines()]
    with torch.inference_mode():
        for start in range(0, len(texts), settings.batch_size):
            tokens = enc.tokenizer(texts[start : start + settings.batch_size]).to(enc.key.device)
            F.normalize(enc.model.encode_text(tokens).float(), dim=-1).cpu().numpy()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--items-per-shard", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="aniso-demo-tiny")
    parser.add_argument("--pretrained", default="demo")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    embed = EmbedSettings(model=args.model, pretrained=args.pretrained or None, batch_size=args.batch_size,
                          decode_workers=args.decode_workers, device=args.device, precision=args.precision)
    settings = Settings(embed=embed, corpus=CorpusSettings(items_per_shard=args.items_per_shard))
    enc = get_encoder(embed)
    print(f"model {enc.key.model}/{enc.key.pretrained} on {enc.key.device} ({enc.key.precision}), "
          f"torch threads {torch.get_num_threads()}, n={args.n}, batch {args.batch_size}, "
          f"shard {args.items_per_shard}, decode workers {args.decode_workers}")
    with tempfile.TemporaryDirectory() as tmp:
        urls = write_demo_corpus(f"{tmp}/corpus", n=args.n, seed=0)
        images = sorted(Path(urls["images"]).glob("*.png"))
        # warm-up: file cache and model
        _bare_images(images[: args.batch_size], embed)
        for modality, url, bare in (("image", urls["images"], lambda: _bare_images(images, embed)),
                                    ("text", urls["text"], lambda: _bare_texts(Path(urls["text"]), embed))):
            # interleaved repeats, best of each: these hosts are shared and noisy
            bare_times, runs = [], []
            for k in range(args.repeats):
                bare_times.append(bare())
                runs.append(_pipeline(url, modality, settings, f"{tmp}/out-{modality}-{k}.zarr"))
            bare_s = min(bare_times)
            pipe_s, stages = min(runs, key=lambda r: r[0])
            total = sum(stages.values())
            shares = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in stages.items())
            print(f"{modality:5s}: pipeline {args.n / pipe_s:8.0f} items/s | bare loop {args.n / bare_s:8.0f} items/s "
                  f"| ratio {bare_s / pipe_s:.2f} | stages: {shares}")


if __name__ == "__main__":
    main()
