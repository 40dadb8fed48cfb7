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
