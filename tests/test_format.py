"""docs/format.md's promises: shipped JSON Schemas validate real manifests and pointers."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from aniso.io.layout import DatasetLayout
from aniso.io.store import EmbeddingStore
from aniso.published.dataset import MANIFEST_FORMAT, schema
from aniso.published.writer import publish

DOCS = Path(__file__).resolve().parents[1] / "docs" / "format.md"


#: What the gate stage returns (``gates.json``), as a run publishes it.
GATES = {
    "passed": True,
    "results": [{"name": "centroid_residual", "observed": 0.0004, "bound": "<= 0.001", "passed": True,
                 "table": "metrics", "expectation": "expect_column_max_to_be_between"},
                {"name": "rows_all_finite", "observed": 0, "bound": "== 0", "passed": True, "table": "shards",
                 "expectation": "expect_column_values_to_be_between"}],
    "metrics": {"centroid_residual": 0.0004, "domain_accuracy": 0.71, "knn_overlap": "nan", "cka": None},
    "seconds": 1.5, "timings": {"prepared": 0.8, "report": 0.2},
    "report": {"html": "runs/k/quality/report.html", "json": "runs/k/quality/report.json"},
}


@pytest.fixture
def published(tmp_path):
    layout = DatasetLayout(str(tmp_path), "ds")
    store = EmbeddingStore.create(layout.substitutes("abc123def4567890"), n_rows=70, dim=3, chunk_rows=16,
                                  shard_rows=32, dtype="float16", storage_options={})
    for shard in range(store.n_shards):
        a, b = store.shard_range(shard)
        store.write_shard(shard, np.ones((b - a, 3), np.float32), [str(i) for i in range(a, b)])
    from aniso.methods import CentroidShift

    rng = np.random.default_rng(0)
    CentroidShift().fit(rng.normal(size=(20, 3)), rng.normal(size=(20, 3)) + 1).save(layout.model("abc123def4567890"))
    pointer = publish(layout, "abc123def4567890", gate_results=GATES, lineage={"method": "realign"},
                      model_from=layout.model("abc123def4567890"), id_source="input",
                      model_fitted_on={"text": {"fingerprint": "f", "rows": 70}})
    manifest = json.loads(Path(layout.published(pointer["version"]), "manifest.json").read_text())
    return pointer, manifest, json.loads(Path(layout.latest).read_text())


def test_real_manifest_and_latest_validate(published):
    pointer, manifest, latest = published
    jsonschema.validate(manifest, schema("manifest"))
    jsonschema.validate(latest, schema("latest"))
    assert manifest["format"] == MANIFEST_FORMAT and latest == pointer
    assert manifest["arrays"]["embedding"]["dtype"] == "float16" and len(manifest["shards"]) == 3
    assert manifest["model"]["method"] == "centroid" and manifest["model"]["fitted_in"] == pointer["version"]


@pytest.mark.parametrize("change", [
    {"path": "/abs/data.zarr"}, {"path": "../runs/x/substitutes.zarr"}, {"path": "s3://b/x"},
    {"path": "a/./b"}, {"format": "aniso-substitutes/1"}, {"zarr_format": 2},
    {"shards": [{"shard": 0, "start": 0, "stop": 32, "rows": 32, "valid_rows": 32, "sha256": "xyz"}]},
    {"version": "../x"}, {"id_source": "rows"}, {"model": {"path": "../runs/x/model"}},
    {"arrays": {"embedding": {"shape": [70, 3], "dtype": "int8", "chunks": [16, 3],
                                                   "shards": [32, 3]}, "id": {}, "valid": {}}},
])
def test_schema_rejects_what_readers_must_refuse(published, change):
    _, manifest, _ = published
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**manifest, **change}, schema("manifest"))


@pytest.mark.parametrize("gates", [
    {"passed": True}, {**GATES, "passed": False}, {**GATES, "results": []},
    {**GATES, "results": [{"name": "x", "observed": 1, "passed": True}]},
    {**GATES, "metrics": {"x": [1, 2]}},
])
def test_schema_describes_the_gates(published, gates):
    _, manifest, _ = published
    jsonschema.validate(manifest, schema("manifest"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**manifest, "gates": gates}, schema("manifest"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**manifest, "lineage": {"inputs": {"text": {"url": "x.npy"}}}}, schema("manifest"))


def test_format_doc_describes_the_gates_and_lineage_fields():
    text = DOCS.read_text()
    for part in ("gates", "lineage"):
        section = text.split(f"### `{part}`", 1)[1].split("\n## ", 1)[0]
        fields = schema("manifest")["properties"][part]["properties"]
        for name in fields:
            assert f"`{name}`" in section, (part, name)
    gates = text.split("### `gates`", 1)[1]
    for name in schema("manifest")["properties"]["gates"]["properties"]["results"]["items"]["properties"]:
        assert f"`{name}`" in gates, name
    for name in ("url", "fingerprint", "embedded"):
        assert f"`{name}`" in text.split("### `lineage`", 1)[1], name


def test_schema_rejects_missing_fields(published):
    _, manifest, latest = published
    for field in schema("manifest")["required"]:
        with pytest.raises(jsonschema.ValidationError, match=field):
            jsonschema.validate({k: v for k, v in manifest.items() if k != field}, schema("manifest"))
    with pytest.raises(jsonschema.ValidationError, match="version"):
        jsonschema.validate({"manifest": latest["manifest"], "run_key": latest["run_key"]}, schema("latest"))


def test_format_doc_names_every_manifest_field_and_the_schema_files():
    text = DOCS.read_text()
    for field in schema("manifest")["required"]:
        assert f"`{field}`" in text, field
    assert "aniso/schema/manifest.schema.json" in text and "aniso/schema/latest.schema.json" in text
    for claim in ("all-zero vectors", "crc32c", "zarr-python ≥ 3.0", "relative path inside the version folder"):
        assert claim in text
