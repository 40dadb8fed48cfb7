"""Ids you can trust: clip-retrieval metadata is part of the fingerprint and must name its id column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aniso.config import load_settings
from aniso.errors import InputError
from aniso.io.inputs import open_embedding_source
from aniso.io.layout import DatasetLayout


def _clip_folder(tmp_path, columns: dict[str, list]) -> str:
    (tmp_path / "text_emb").mkdir(exist_ok=True)
    (tmp_path / "metadata").mkdir(exist_ok=True)
    np.save(tmp_path / "text_emb" / "text_emb_0.npy", np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32))
    pd.DataFrame(columns).to_parquet(tmp_path / "metadata" / "metadata_0.parquet")
    return str(tmp_path / "text_emb")


def test_corrected_ids_change_the_fingerprint(tmp_path):
    url = _clip_folder(tmp_path, {"key": [f"old{i}" for i in range(7)], "caption": ["c"] * 7})
    before = open_embedding_source(url)
    assert before.read_rows(0, 2)[1] == ["old0", "old1"]
    _clip_folder(tmp_path, {"key": [f"new{i}" for i in range(7)], "caption": ["c"] * 7})  # same embeddings
    after = open_embedding_source(url)
    assert after.fingerprint != before.fingerprint
    assert after.read_rows(0, 2)[1] == ["new0", "new1"]


def test_metadata_without_an_id_column_is_an_error_naming_the_columns(tmp_path):
    url = _clip_folder(tmp_path, {"caption": ["c"] * 7, "similarity": [0.5] * 7})
    with pytest.raises(InputError, match=r"metadata_0\.parquet has none of the id columns .*columns found: \['caption', 'similarity'\]"):
        open_embedding_source(url, what="text input")
    rows = open_embedding_source(url, ids="row-number")  # only when asked for explicitly
    assert rows.read_rows(3, 5)[1] == ["3", "4"]
    named = open_embedding_source(url, ids="caption")
    assert named.read_rows(0, 1)[1] == ["c"] and named.fingerprint != rows.fingerprint
    with pytest.raises(InputError, match="no column 'sample_id'"):
        open_embedding_source(url, ids="sample_id")


def test_the_setting_reaches_the_ingest_stage(tmp_path):
    from aniso.io.rows import open_rows
    from aniso.stages import ingest as ingest_stage

    url = _clip_folder(tmp_path, {"caption": ["c"] * 7})
    settings = load_settings(overrides=["corpus.embedding_ids=row-number"])
    assert settings.corpus.embedding_ids == "row-number"
    layout = DatasetLayout(str(tmp_path), "ds")
    with pytest.raises(InputError, match="columns found"):
        ingest_stage.prepare_input(url, layout, modality="text", chunk_rows=4, shard_rows=4, storage_options={})
    for in_place in (True, False):  # read in place through a view, or copied into a store
        ref, pending = ingest_stage.prepare_input(url, layout, modality="text", chunk_rows=4, shard_rows=4,
                                                  storage_options={}, ids=settings.corpus.embedding_ids,
                                                  in_place=in_place)
        store_url = ref.url
        for shard in pending:
            ingest_stage.import_shard(url, store_url, shard, {}, ids=settings.corpus.embedding_ids)
        assert list(open_rows(store_url).read_rows(0, 7)[1]) == [str(i) for i in range(7)]


def _two_parts(tmp_path, *, meta: tuple[bool, bool]) -> str:
    """A clip-retrieval folder of two 5-row parts; ``meta`` says which part has metadata ids."""
    (tmp_path / "text_emb").mkdir(exist_ok=True)
    (tmp_path / "metadata").mkdir(exist_ok=True)
    for part, has in enumerate(meta):
        np.save(tmp_path / "text_emb" / f"text_emb_{part}.npy",
                np.random.default_rng(part).normal(size=(5, 4)).astype(np.float32))
        if has:
            pd.DataFrame({"key": [f"p{part}-{i}" for i in range(5)]}).to_parquet(
                tmp_path / "metadata" / f"metadata_{part}.parquet")
    return str(tmp_path / "text_emb")


def test_parts_with_and_without_metadata_are_refused_naming_the_part(tmp_path):
    """Row numbers for one part beside real ids of another would publish ids of two kinds."""
    url = _two_parts(tmp_path, meta=(True, False))
    with pytest.raises(InputError, match=r"text_emb_1\.npy has no .*metadata_1\.parquet, but .*metadata_0\.parquet"
                                         r".*corpus\.embedding_ids=row-number"):
        open_embedding_source(url, what="text input")
    rows = open_embedding_source(url, ids="row-number")  # one id source for every part: fine
    assert rows.read_rows(3, 7)[1] == ["3", "4", "5", "6"]


def test_a_null_id_is_refused_naming_file_row_and_column(tmp_path):
    url = _clip_folder(tmp_path, {"key": ["a", "b", None, "d", "e", "f", "g"]})
    source = open_embedding_source(url)
    assert source.read_rows(0, 2)[1] == ["a", "b"]
    with pytest.raises(InputError, match=r"metadata_0\.parquet: row 2 has a null id \(column 'key'\)"):
        source.read_rows(0, 7)
