"""``produce`` never replaces the demo dataset by accident (the schema guard: test_frozen_model.py)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from aniso.errors import ConfigError
from aniso.flows.cli import app
from aniso.published.guard import refuse_demo_replacement


def test_produce_without_dataset_refuses_to_replace_the_demo_and_says_so_first(tmp_path, monkeypatch, gap):
    monkeypatch.chdir(tmp_path)  # the default profile's root, .aniso-demo, is relative
    np.save(tmp_path / "text.npy", gap.text[:100])
    np.save(tmp_path / "image.npy", gap.image[:100])
    result = CliRunner().invoke(app, ["produce", "--text", "text.npy", "--image", "image.npy"])
    assert result.exit_code == 2, result.output
    first = result.output.strip().splitlines()[0]
    assert first.startswith("aniso: error: refusing to replace the demo dataset 'demo' under .aniso-demo with text.npy")
    assert "--dataset NAME" in first
    assert not (tmp_path / ".aniso-demo").exists()  # nothing written


def test_the_demo_guard_lets_the_demo_corpus_and_named_datasets_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refuse_demo_replacement(".aniso-demo/corpus/text-4000/captions.jsonl", ".aniso-demo", "demo", dataset_given=False)
    refuse_demo_replacement("mine.npy", ".aniso-demo", "mine", dataset_given=True)
    refuse_demo_replacement("mine.npy", "elsewhere", "demo", dataset_given=False)
    refuse_demo_replacement("s3://b/mine.npy", "s3://b/root", "demo", dataset_given=False)
    with pytest.raises(ConfigError, match="demo dataset 'demo'"):
        refuse_demo_replacement("mine.npy", str(tmp_path / ".aniso-demo"), "demo", dataset_given=False)


def test_cli_refusals_exit_two_with_one_line(tmp_path, gap):
    """A bare .npy with --model, and a version that would change LATEST's dimension: exit 2,
    one line naming the fix, before any work (nothing written under the dataset)."""
    from aniso.io.layout import DatasetLayout
    from aniso.io.store import EmbeddingStore
    from aniso.published.dataset import list_versions
    from aniso.published.writer import publish

    np.save(tmp_path / "text.npy", gap.text[:100])
    np.save(tmp_path / "image.npy", gap.image[:100])
    base = ["produce", "--text", str(tmp_path / "text.npy"), "--image", str(tmp_path / "image.npy"),
            "--out", str(tmp_path / "root"), "--dataset", "d", "--profile", "ci"]
    bare = CliRunner().invoke(app, [*base, "--model", "latest"])
    assert bare.exit_code == 2, bare.output
    line = [ln for ln in bare.output.splitlines() if ln.startswith("aniso: error:")]
    assert len(line) == 1 and "has no ids" in line[0] and "corpus.embedding_ids=row-number" in line[0]

    layout = DatasetLayout(str(tmp_path / "root"), "d")  # a published version with d=3
    store = EmbeddingStore.create(layout.substitutes("olderaaaaaaaaaaa"), n_rows=20, dim=3, chunk_rows=8,
                                  shard_rows=16)
    for shard in range(store.n_shards):
        a, b = store.shard_range(shard)
        store.write_shard(shard, np.ones((b - a, 3), np.float32), [str(i) for i in range(a, b)])
    publish(layout, "olderaaaaaaaaaaa", gate_results={}, lineage={}, id_source="row-number")
    changed = CliRunner().invoke(app, base)
    assert changed.exit_code == 2, changed.output
    assert "dim 3 -> 64" in changed.output and "publish.allow_schema_change=true" in changed.output
    assert len(list_versions(layout)) == 1
