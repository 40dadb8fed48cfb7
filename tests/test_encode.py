"""The open_clip encoder with a tiny config registered at test time (random weights, no downloads)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from aniso._fs import join_url, open_url
from aniso.config import CorpusSettings, EmbedSettings, Settings
from aniso.corpus import plan_shards
from aniso.encode import clear_encoder_cache, embed_shard, get_encoder, load_encoder
from aniso.errors import ConfigError, DeviceUnavailable

TINY = "aniso-test-tiny"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TEXTS = ["a red square", "a small blue circle at the top", "two green triangles", "", "x" * 200, "a cat", "a dog"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> EmbedSettings:
    import open_clip

    path = tmp_path_factory.mktemp("configs") / f"{TINY}.json"
    path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    return EmbedSettings(model=TINY, pretrained=None, batch_size=3, decode_workers=2)


def _images(n: int, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size + k, 3), dtype=np.uint8)) for k in range(n)]


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_shapes_norms_and_dtype(tiny):
    enc = get_encoder(tiny)
    assert enc.key.device == "cpu" and enc.key.precision == "fp32" and enc.dim == 32
    text = enc.encode_texts(TEXTS)
    image = enc.encode_images(_images(5))
    for out, n in ((text, len(TEXTS)), (image, 5)):
        assert out.shape == (n, 32) and out.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert enc.encode_texts([]).shape == (0, 32)


def test_loaded_once_per_process(tiny):
    assert get_encoder(tiny) is get_encoder(tiny.model_copy(update={"batch_size": 7, "decode_workers": 0}))


def test_deterministic_and_batch_size_invariant(tiny):
    enc = get_encoder(tiny)
    a = enc.encode_texts(TEXTS, batch_size=1)
    b = enc.encode_texts(TEXTS, batch_size=4)
    np.testing.assert_array_equal(enc.encode_texts(TEXTS, batch_size=4), b)
    np.testing.assert_allclose(a, b, atol=1e-5)
    images = _images(7)
    x = enc.encode_images(images, batch_size=2)
    y, errors = enc.encode_image_bytes([_png(im) for im in images], batch_size=5, decode_workers=2)
    assert errors == [None] * 7
    np.testing.assert_allclose(x, y, atol=1e-5)
    z, _ = enc.encode_image_bytes([_png(im) for im in images], batch_size=3, decode_workers=0)
    np.testing.assert_allclose(y, z, atol=1e-5)


def test_local_checkpoint_path_reproduces_the_model(tiny, tmp_path):
    enc = get_encoder(tiny)
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": enc.model.state_dict()}, path)
    loaded = load_encoder(tiny.model_copy(update={"pretrained": str(path)}))
    np.testing.assert_allclose(loaded.encode_texts(TEXTS), enc.encode_texts(TEXTS), atol=1e-6)


def test_require_gpu_without_cuda_fails_clearly(tiny):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(DeviceUnavailable, match=r"embed.require_gpu is set but no CUDA device is usable"):
        get_encoder(tiny.model_copy(update={"require_gpu": True}))
    with pytest.raises(DeviceUnavailable, match="embed.device is 'cuda'"):
        get_encoder(tiny.model_copy(update={"device": "cuda"}))


def test_bad_settings_raise_config_errors(tiny):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        get_encoder(tiny.model_copy(update={"precision": "fp16", "device": "cpu"}))
    with pytest.raises(ConfigError, match="cannot load open_clip model 'no-such-model'"):
        load_encoder(tiny.model_copy(update={"model": "no-such-model"}))
    with pytest.raises(ConfigError, match="only defined for model"):
        load_encoder(tiny.model_copy(update={"pretrained": "demo"}))


def test_embed_shard_records_bad_images_and_keeps_alignment(tiny, root):
    url, options = root
    good = _images(3)
    blobs = {"a": _png(good[0]), "b": _png(good[1])[:60], "c": b"junk", "d": _png(good[2])}
    for name, data in blobs.items():
        with open_url(join_url(url, f"{name}.png"), "wb", options) as f:
            f.write(data)
    settings = Settings(embed=tiny, corpus=CorpusSettings(items_per_shard=8))
    spec = plan_shards(url, settings.corpus, modality="image", storage_options=options)[0]
    out = embed_shard(spec, settings)
    emb, ids, records, timings = out.embeddings, out.ids, out.records, out.timings
    assert ids == ["a", "b", "c", "d"] and emb.shape == (4, 32) and emb.dtype == np.float32
    assert out.valid.tolist() == [True, False, False, True]
    assert not emb[1:3].any()
    np.testing.assert_allclose(np.linalg.norm(emb[[0, 3]], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb[[0, 3]], get_encoder(tiny).encode_images([good[0], good[2]]), atol=1e-5)
    assert records[1].status == "failed" and records[1].error.startswith(("truncated image", "corrupt image"))
    assert records[2].error.startswith("undecodable image")
    assert {"read", "decode", "encode", "total"} <= set(timings) and timings["failed"] == 2


def test_embed_shard_text(tiny, tmp_path):
    lines = [json.dumps({"id": f"t{i}", "text": t}) for i, t in enumerate(TEXTS)]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    settings = Settings(embed=tiny, corpus=CorpusSettings(items_per_shard=4))
    specs = plan_shards(str(tmp_path), settings.corpus)
    parts = [embed_shard(spec, settings) for spec in specs]
    ids = sum((p.ids for p in parts), [])
    valid = np.concatenate([p.valid for p in parts])
    assert ids == [f"t{i}" for i in range(len(TEXTS))] and valid.tolist() == [t != "" for t in TEXTS]
    emb = np.concatenate([p.embeddings for p in parts])
    np.testing.assert_allclose(emb[valid], get_encoder(tiny).encode_texts([t for t in TEXTS if t]), atol=1e-5)


def test_unreachable_pretrained_tag_names_the_offline_alternatives():
    # HF_HUB_OFFLINE=1 (conftest): a tag needs a download, which fails with a ConfigError that says what to do
    with pytest.raises(ConfigError, match="pretrained='laion2b_s34b_b79k'.*local checkpoint path"):
        load_encoder(EmbedSettings(model="ViT-B-32", pretrained="laion2b_s34b_b79k"))


@pytest.mark.gpu
def test_cuda_fp16_encoder(tiny):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    clear_encoder_cache()
    enc = get_encoder(tiny.model_copy(update={"require_gpu": True}))
    assert enc.key.device == "cuda" and enc.key.precision == "fp16"
    out = enc.encode_images(_images(4))
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-3)
