"""Embedding inputs: .npy files, clip-retrieval folders and Zarr stores, local and S3."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aniso._fs import join_url, open_url
from aniso.errors import InputError
from aniso.io.inputs import open_embedding_source


def _put_npy(url, array, options):
    with open_url(url, "wb", options) as f:
        np.save(f, array)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_npy_rows_by_range(root, dtype):
    url, options = root
    data = np.random.default_rng(0).normal(size=(500, 12)).astype(dtype)
    _put_npy(join_url(url, "x.npy"), data, options)
    source = open_embedding_source(join_url(url, "x.npy"), options)
    assert (source.n_rows, source.dim) == (500, 12)
    emb, ids = source.read_rows(123, 321)
    np.testing.assert_array_equal(emb, data[123:321].astype(np.float32))
    assert ids[0] == "123" and len(ids) == 198


def test_clip_retrieval_layout_with_metadata(root):
    url, options = root
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=(n, 8)).astype(np.float16) for n in (40, 25)]
    for i, part in enumerate(parts):
        _put_npy(join_url(url, "emb", "text_emb", f"text_emb_{i}.npy"), part, options)
        meta = pd.DataFrame({"key": [f"k{i}-{j}" for j in range(len(part))], "caption": ["c"] * len(part)})
        with open_url(join_url(url, "emb", "metadata", f"metadata_{i}.parquet"), "wb", options) as f:
            meta.to_parquet(f)
    source = open_embedding_source(join_url(url, "emb", "text_emb"), options)
    assert source.n_rows == 65
    emb, ids = source.read_rows(30, 50)
    np.testing.assert_array_equal(emb, np.concatenate(parts)[30:50].astype(np.float32))
    assert ids[:2] == ["k0-30", "k0-31"] and ids[-1] == "k1-9"


def test_fingerprint_follows_content_not_mtime(tmp_path):
    data = np.ones((10, 4), np.float32)
    np.save(tmp_path / "a.npy", data)
    first = open_embedding_source(str(tmp_path / "a.npy")).fingerprint
    np.save(tmp_path / "a.npy", data)  # rewritten, same bytes
    assert open_embedding_source(str(tmp_path / "a.npy")).fingerprint == first
    np.save(tmp_path / "a.npy", data * 2)
    assert open_embedding_source(str(tmp_path / "a.npy")).fingerprint != first


@pytest.mark.s3
def test_equal_bytes_give_equal_fingerprints_locally_and_on_s3(tmp_path, s3_root):
    """The fingerprint is the content's: the same files on local disk and on S3 (where the ETag
    depends on the upload), a single file under another name, all the same input; one changed
    byte is another input."""
    s3_url, options = s3_root
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 8)).astype(np.float32) for n in (40, 25)]
    meta = [pd.DataFrame({"id": [f"p{i}-{r}" for r in range(len(a))]}) for i, a in enumerate(parts)]
    for base, opts in ((str(tmp_path / "local"), {}), (s3_url, options)):
        for i, (array, frame) in enumerate(zip(parts, meta)):
            _put_npy(join_url(base, "emb", "text_emb", f"text_emb_{i}.npy"), array, opts)
            with open_url(join_url(base, "emb", "metadata", f"metadata_{i}.parquet"), "wb", opts) as f:
                frame.to_parquet(f)
        _put_npy(join_url(base, "one.npy"), parts[0], opts)
    folder = [open_embedding_source(join_url(b, "emb", "text_emb"), o).fingerprint
              for b, o in ((str(tmp_path / "local"), {}), (s3_url, options))]
    single = [open_embedding_source(join_url(b, "one.npy"), o).fingerprint
              for b, o in ((str(tmp_path / "local"), {}), (s3_url, options))]
    assert folder[0] == folder[1] and single[0] == single[1] and folder[0] != single[0]
    _put_npy(str(tmp_path / "renamed.npy"), parts[0], {})
    assert open_embedding_source(str(tmp_path / "renamed.npy")).fingerprint == single[0]
    changed = parts[0].copy()
    changed[39, 7] += 1.0
    _put_npy(join_url(s3_url, "one.npy"), changed, options)
    assert open_embedding_source(join_url(s3_url, "one.npy"), options).fingerprint != single[0]


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_embedding_source(str(tmp_path / "missing.npy"))
    bad = np.ones((20, 4), np.float32)
    bad[13, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(InputError, match=r"nan\.npy: row 13 contains NaN"):
        open_embedding_source(str(tmp_path / "nan.npy")).read_rows(0, 20)
    np.save(tmp_path / "empty.npy", np.empty((0, 4), np.float32))
    with pytest.raises(InputError, match="no rows"):
        open_embedding_source(str(tmp_path / "empty.npy"))
    np.save(tmp_path / "flat.npy", np.ones(5, np.float32))
    with pytest.raises(InputError, match="2-D"):
        open_embedding_source(str(tmp_path / "flat.npy"))
    raw = (tmp_path / "nan.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(raw[:-40])
    with pytest.raises(InputError, match="truncated"):
        open_embedding_source(str(tmp_path / "short.npy"))
    (tmp_path / "text.txt").write_text("hello")
    with pytest.raises(InputError, match="neither"):
        open_embedding_source(str(tmp_path / "text.txt"))


def test_metadata_row_count_must_match(tmp_path):
    (tmp_path / "text_emb").mkdir()
    (tmp_path / "metadata").mkdir()
    np.save(tmp_path / "text_emb" / "text_emb_0.npy", np.ones((10, 4), np.float32))
    pd.DataFrame({"key": [str(i) for i in range(9)]}).to_parquet(tmp_path / "metadata" / "metadata_0.parquet")
    with pytest.raises(InputError, match="ids do not match embeddings: .*metadata_0.parquet has 9 rows"):
        open_embedding_source(str(tmp_path / "text_emb")).read_rows(0, 10)
