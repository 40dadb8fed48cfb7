"""Lineage of a run: input URLs (redacted), fingerprints, the embedding model only when aniso
embedded, in ``run.json``, the manifest and the report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from aniso.config import load_settings
from aniso.flows._common import make_task_runner
from aniso.flows.produce import produce
from aniso.io.layout import DatasetLayout, input_record, run_lineage
from aniso.published.dataset import open_published, schema


def test_embed_model_only_when_aniso_embedded_and_urls_redacted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    precomputed = {"text": input_record("in/text.npy", "f1", embedded=False),
                   "image": input_record("s3://user:secret@bucket/img?sig=abc&x=1", "f2", embedded=False)}
    lineage = run_lineage(precomputed, embed_model="aniso-demo-tiny", method="realign")
    assert "embed_model" not in lineage and lineage["method"] == "realign"
    assert lineage["inputs"]["text"] == {"url": str(tmp_path / "in" / "text.npy"), "fingerprint": "f1",
                                         "embedded": False}
    shown = lineage["inputs"]["image"]["url"]
    assert "secret" not in shown and "abc" not in shown and shown.startswith("s3://bucket/img")
    corpus = {**precomputed, "text": input_record("captions.jsonl", "f3", embedded=True)}
    assert run_lineage(corpus, embed_model="ViT-B-32")["embed_model"] == "ViT-B-32"


@pytest.mark.usefixtures("prefect_harness")
def test_precomputed_run_records_urls_and_no_embed_model(tmp_path, gap, monkeypatch):
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "text.npy", gap.text)
    np.save(tmp_path / "in" / "image.npy", gap.image)
    monkeypatch.chdir(tmp_path)  # relative inputs, recorded as absolute paths
    settings = load_settings(profile="ci", overrides=[f"storage.root={tmp_path / 'out'}", "storage.dataset=lin",
                                                      "method.name=realign"], environ={})
    flow = produce.with_options(task_runner=make_task_runner(settings.cluster))
    result = flow(text="in/text.npy", image="in/image.npy", settings=settings)
    manifest = open_published(str(tmp_path / "out"), "lin").manifest
    lineage = manifest["lineage"]
    jsonschema.validate(manifest, schema("manifest"))
    assert "embed_model" not in lineage, lineage
    for name in ("text", "image"):
        record = lineage["inputs"][name]
        assert record["url"] == os.path.join(str(tmp_path), "in", f"{name}.npy")
        assert record["embedded"] is False and len(record["fingerprint"]) == 64
    run = json.loads(Path(DatasetLayout(str(tmp_path / "out"), "lin").run_record(result["run_key"])).read_text())
    assert run["inputs"] == lineage["inputs"] and "embed_model" not in run
    report = (tmp_path / "out" / "lin" / "published" / manifest["version"] / "report.html").read_text()
    assert lineage["inputs"]["text"]["url"] in report and "embedding model" not in report
    # the report lists this run's stage timings
    timings = report.split("<h2>Stage timings</h2>", 1)[1].split("</table>", 1)[0]
    for stage in ("inputs", "statistics", "fit", "apply", "gates"):
        assert f"<td>{stage}</td>" in timings, stage
    assert set(run["stage_seconds"]) == {"inputs", "statistics", "fit", "apply"}
