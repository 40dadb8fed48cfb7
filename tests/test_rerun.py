"""Reruns and resume at awkward sizes: inputs smaller than one chunk, than one shard, and not a
multiple of either, on a local directory and on the loopback S3 server.

Before the fix, a second ``produce`` on any input under one full shard failed with "a store
already exists ... expected 65536" (the store's shard shrinks to a small input, the check
compared it with the setting).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from aniso._fs import join_url, open_url
from aniso.config import load_settings
from aniso.flows.produce import produce
from aniso.io.layout import DatasetLayout
from aniso.io.store import EmbeddingStore
from aniso.published.dataset import open_published, read_latest
from aniso.stages import apply as apply_stage

pytestmark = pytest.mark.usefixtures("prefect_harness")

#: (backend, profile, rows): ci has chunks of 256 and shards of 1024 rows, default 4096 and 65536.
SIZES = [
    ("local", "ci", 200),  # smaller than one chunk
    ("s3", "ci", 200),
    ("local", "ci", 700),  # smaller than one shard, not a multiple of the chunk
    ("local", "ci", 2500),  # several shards, the last one partial
    ("local", "default", 3000),  # the case: under one default chunk and shard
    ("s3", "default", 3000),
]


def _root(request, tmp_path, backend):
    if backend == "local":
        return str(tmp_path / "root"), {}
    request.applymarker(pytest.mark.s3)
    return request.getfixturevalue("s3_root")


def _settings(profile, url, options, *sets):
    settings = load_settings(profile=profile, overrides=[f"storage.root={url}", "storage.dataset=r",
                                                         "method.name=anisoalign", *sets], environ={})
    settings.storage.storage_options = options
    return settings


def _inputs(url, options, gap, n):
    rng = np.random.default_rng(n)
    text = gap.text[rng.integers(0, len(gap.text), n)] if n > len(gap.text) else gap.text[:n]
    paths = {}
    for name, array in (("text", text), ("image", gap.image[: min(n, len(gap.image))])):
        paths[name] = join_url(url, "in", f"{name}.npy")
        with open_url(paths[name], "wb", options) as f:
            np.save(f, array)
    return paths


def _run(settings, paths):
    return produce(text=paths["text"], image=paths["image"], settings=settings)


@pytest.mark.parametrize("backend, profile, n", SIZES, ids=[f"{b}-{p}-{n}" for b, p, n in SIZES])
def test_rerun_same_and_other_method_at_every_size(request, tmp_path, gap, backend, profile, n):
    url, options = _root(request, tmp_path, backend)
    paths = _inputs(url, options, gap, n)
    first = _run(_settings(profile, url, options), paths)
    again = _run(_settings(profile, url, options), paths)
    assert again["run_key"] == first["run_key"]
    assert again["published"]["version"] == first["published"]["version"]
    other = _run(_settings(profile, url, options, "method.params.strength=0.2"), paths)
    assert other["run_key"] != first["run_key"]
    published = open_published(url, "r", storage_options=options)
    assert published.manifest["run_key"] == other["run_key"] and published.manifest["n_rows"] == n
    published.verify()
    subs = EmbeddingStore.open(first["substitutes"], storage_options=options)
    assert subs.n_rows == n and subs.is_complete()


@pytest.mark.parametrize("backend, n", [("local", 200), ("s3", 700)])
def test_resume_after_a_crash_below_one_shard(request, tmp_path, gap, monkeypatch, backend, n):
    url, options = _root(request, tmp_path, backend)
    paths = _inputs(url, options, gap, n)
    settings = _settings("ci", url, options)
    real_apply = apply_stage.apply_shard

    def crash(*args, **kwargs):
        raise RuntimeError("injected crash in apply")

    monkeypatch.setattr(apply_stage, "apply_shard", crash)
    with pytest.raises(RuntimeError, match="injected crash"):
        _run(settings, paths)
    assert read_latest(DatasetLayout(url, "r"), storage_options=options) is None
    monkeypatch.setattr(apply_stage, "apply_shard", real_apply)
    resumed = _run(settings, paths)

    clean_url = join_url(url, "clean")
    clean = _run(_settings("ci", clean_url, options), _inputs(clean_url, options, gap, n))
    assert resumed["run_key"] == clean["run_key"]
    a = open_published(url, "r", storage_options=options)
    b = open_published(clean_url, "r", storage_options=options)
    assert a.manifest["shards"] == b.manifest["shards"]
    np.testing.assert_array_equal(a.embedding[:], b.embedding[:])


def test_embedding_inputs_are_keyed_without_the_embed_settings(tmp_path, gap):
    """Precomputed embeddings are not embedded: another ``embed.model`` is the same run (resumed,
    the same version), and the run record's config leaves the embed section out."""
    url, options = str(tmp_path / "root"), {}
    paths = _inputs(url, options, gap, 700)
    first = _run(_settings("ci", url, options), paths)
    other = _run(_settings("ci", url, options, "embed.model=ViT-B-32", "embed.pretrained=openai"), paths)
    assert other["run_key"] == first["run_key"]
    assert other["published"]["version"] == first["published"]["version"]
    with open_url(DatasetLayout(url, "r").run_record(first["run_key"]), "rb", options) as f:
        record = json.load(f)
    assert "embed" not in record["config"] and "method" in record["config"]
    assert "embed_model" not in record
