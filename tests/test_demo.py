"""The offline demo: a deterministic scene corpus and the shipped ``aniso-demo-tiny`` weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aniso.config import CorpusSettings, EmbedSettings
from aniso.corpus import plan_shards, read_shard
from aniso.demo.model import WEIGHTS_PATH
from aniso.demo.scenes import COLOURS, SHAPES, generate, write_demo_corpus
from aniso.encode import get_encoder


def test_scene_generator_is_deterministic():
    a = [(np.asarray(img), cap) for img, cap, _ in generate(6, seed=3)]
    b = [(np.asarray(img), cap) for img, cap, _ in generate(6, seed=3)]
    c = [cap for _, cap, _ in generate(6, seed=4)]
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    assert [cap for _, cap in a] != c
    assert a[0][0].shape == (48, 48, 3) and a[0][0].dtype == np.uint8


def test_captions_describe_the_scene():
    for image, cap, scene in generate(20, seed=1):
        assert len(cap.split(" and ")) == len(scene.objects)
        for obj in scene.objects:
            assert obj.shape in SHAPES and obj.colour in COLOURS and f"{obj.size} {obj.colour} {obj.shape}" in cap
        # the rendered image contains each object's colour
        pixels = np.asarray(image).reshape(-1, 3).astype(int)
        for obj in scene.objects:
            closest = np.abs(pixels - np.array(COLOURS[obj.colour])).sum(1).min()
            assert closest < 60, (cap, obj.colour)


@pytest.mark.parametrize("layout", ["folder", "webdataset"])
def test_write_demo_corpus_reads_back(root, layout):
    url, options = root
    out = write_demo_corpus(url, n=10, seed=2, layout=layout, items_per_tar=4, storage_options=options)
    texts = [read_shard(s) for s in plan_shards(out["text"], CorpusSettings(), modality="text", storage_options=options)]
    images = [read_shard(s) for s in plan_shards(out["images"], CorpusSettings(), modality="image", storage_options=options)]
    text_ids = sum((t.ids for t in texts), [])
    image_ids = [i.split("/")[-1] for part in images for i in part.ids]
    assert text_ids == image_ids == [f"scene-{k:06d}" for k in range(10)]
    assert sum((t.payloads for t in texts), []) == [cap for _, cap, _ in generate(10, seed=2)]


def test_shipped_demo_model_learned_cross_modal_structure():
    from aniso.demo.train import TrainConfig, render_set

    assert WEIGHTS_PATH.exists(), f"demo weights missing: {WEIGHTS_PATH}"
    assert WEIGHTS_PATH.stat().st_size < 2.5e6
    meta = json.loads(WEIGHTS_PATH.with_suffix(".json").read_text())
    assert meta["model"] == "aniso-demo-tiny" and "python -m aniso.demo.train" in meta["command"]
    enc = get_encoder(EmbedSettings())  # the defaults: aniso-demo-tiny with pretrained="demo"
    assert enc.key.model == "aniso-demo-tiny" and enc.key.pretrained == "demo"
    # held-out scenes: a seed range the trainer never used for training
    pixels, captions = render_set(200, seed=TrainConfig().eval_seed + 7919, unique=True)
    images = [__import__("PIL.Image", fromlist=["Image"]).fromarray(p.permute(1, 2, 0).numpy()) for p in pixels]
    img = enc.encode_images(images, batch_size=100)
    txt = enc.encode_texts(captions, batch_size=100)
    r1 = float(np.mean((txt @ img.T).argmax(1) == np.arange(len(captions))))
    gap = float(np.linalg.norm(img.mean(0) - txt.mean(0)))
    assert r1 > 20 / len(captions), f"R@1 {r1:.3f} is not far above chance {1 / len(captions):.3f}"
    assert gap > 0.4, f"modality gap {gap:.3f} is not CLIP-like"


def test_trainer_writes_a_loadable_compact_checkpoint(tmp_path):
    from aniso.demo.model import load_demo_model
    from aniso.demo.train import TrainConfig, train

    out = tmp_path / "tiny.pt"
    result = train(TrainConfig(n_train=64, n_eval=16, steps=2, batch_size=16, warmup=1, threads=1), out=out)
    assert set(result["final"]) >= {"r1", "chance", "gap", "paired_cos"} and result["final"]["chance"] == 1 / 16
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["command"].startswith("python -m aniso.demo.train --n-train 64")
    model, preprocess, tokenizer = load_demo_model(path=out)
    assert model.encode_text(tokenizer(["a small red circle in the center"])).shape == (1, 128)
