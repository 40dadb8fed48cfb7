"""The embed flow: raw corpus → open_clip store + manifest; resume after a crash is bit-identical."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aniso.config import CorpusSettings, EmbedSettings, Settings, StorageSettings, StoreSettings
from aniso.corpus import read_manifest
from aniso.demo.scenes import write_demo_corpus
from aniso.errors import FailureRateExceeded
from aniso.io.store import EmbeddingStore

TINY = "aniso-flow-tiny"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    import open_clip
    import torch

    path = tmp_path_factory.mktemp("configs") / f"{TINY}.json"
    path.write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"image_size": 48, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    return TINY


def _settings(root: str, options: dict, tag: str) -> Settings:
    return Settings(
        storage=StorageSettings(root=root, dataset=tag, storage_options=options),
        store=StoreSettings(chunk_rows=4),
        corpus=CorpusSettings(items_per_shard=8, max_failure_rate=0.2),
        embed=EmbedSettings(model=TINY, pretrained=None, batch_size=5),
    )


def _arrays(url: str, options: dict):
    store = EmbeddingStore.open(url, storage_options=options)
    return store.embedding[:], store.ids[:], store.group["valid"][:]


def test_embed_flow_resumes_bit_identical(prefect_harness, tiny_model, root, monkeypatch):
    import aniso.tasks.embed
    from aniso.flows.embed import embed

    url, options = root
    corpus = write_demo_corpus(f"{url}/corpus", n=28, seed=5, storage_options=options)
    # one undecodable image: recorded, the run goes on (1/28 < 20 %)
    from aniso._fs import open_url

    with open_url(f"{corpus['images']}/scene-000003.png", "wb", options) as f:
        f.write(b"broken")

    clean = embed(corpus["images"], "image", _settings(url, options, "clean"))
    assert clean["shards"] == 4 and clean["rows"] == 28 and clean["embedded_now"] == 4

    real = aniso.tasks.embed.embed_shard

    def crash_on_shard_2(spec, settings):
        if spec.index == 2:
            raise RuntimeError("injected crash")
        return real(spec, settings)

    monkeypatch.setattr(aniso.tasks.embed, "embed_shard", crash_on_shard_2)
    with pytest.raises(Exception, match="injected crash"):
        embed(corpus["images"], "image", _settings(url, options, "resumed"))
    monkeypatch.setattr(aniso.tasks.embed, "embed_shard", real)
    resumed = embed(corpus["images"], "image", _settings(url, options, "resumed"))
    assert resumed["embedded_now"] < 4  # completed shards were skipped

    a, b = _arrays(clean["store"], options), _arrays(resumed["store"], options)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[2].sum() == 27 and not a[2][3]
    manifest = read_manifest(url, "resumed", "image", storage_options=options)
    assert manifest["id"].tolist() == [f"scene-{k:06d}" for k in range(28)]
    bad = manifest[manifest["status"] != "ok"]
    assert bad["id"].tolist() == ["scene-000003"] and bad["error"].iloc[0].startswith("undecodable image")


def test_embed_flow_fails_above_the_failure_rate(prefect_harness, tiny_model, tmp_path):
    from aniso.flows.embed import embed

    lines = [json.dumps({"id": f"t{k}", "text": "" if k % 3 == 0 else f"caption {k}"}) for k in range(12)]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(FailureRateExceeded, match=r"4 of 12 items failed \(33.33%\).*t0 .*empty text"):
        embed(str(tmp_path / "c.jsonl"), "text", _settings(str(tmp_path / "root"), {}, "rate"))
    # the manifest is written before the check, so the failures can be inspected
    assert (read_manifest(str(tmp_path / "root"), "rate", "text")["status"] == "failed").sum() == 4


def test_embed_flow_names_tar_samples_by_their_tar_when_keys_repeat(prefect_harness, tiny_model, tmp_path,
                                                                   numbered_tars):
    """Keys that start again in each tar: refused by default (naming the setting), embedded with
    ``corpus.tar_ids=path`` under ``<tar path>/<key>`` ids."""
    from aniso.flows.embed import embed

    corpus = numbered_tars(tmp_path / "wds", 2, 5)
    root = str(tmp_path / "root")
    with pytest.raises(FailureRateExceeded, match=r"5 of 10 items failed.*first seen in 00000\.tar.*corpus\.tar_ids=path"):
        embed(str(corpus), "text", _settings(root, {}, "by-key"))
    settings = _settings(root, {}, "by-path")
    settings.corpus.tar_ids = "path"
    result = embed(str(corpus), "text", settings)
    assert result["rows"] == 10
    _, ids, valid = _arrays(result["store"], {})
    assert list(ids) == [f"{t:05d}/{k:06d}" for t in range(2) for k in range(5)] and valid.all()
