"""The carry-over of a frozen-model run, stage by stage (aniso/stages/carry.py), without the flow.

A shard whose input is unchanged is carried (its marker's checksum is the earlier one, checked,
not trusted); a changed shard, or a carried copy that does not match its checksum, is applied
from the rows already read, with the same bits and the same input digest as a plain apply.
"""

from __future__ import annotations

import numpy as np
import pytest

from aniso.io.store import EmbeddingStore, shard_checksum
from aniso.methods import get_aligner
from aniso.stages.apply import apply_shard, input_digest, prepare_substitutes
from aniso.stages.carry import carry_entries, carry_or_apply_shard
from aniso.testing.synthetic import planted_gap

SHARD = 256


@pytest.fixture()
def world(tmp_path):
    g = planted_gap(n=3 * SHARD, d=32, seed=2)
    model = get_aligner("anisoalign").fit(g.text, g.image, seed=0).save(str(tmp_path / "model"))

    def text_store(name: str, rows: np.ndarray) -> str:
        store = EmbeddingStore.create(str(tmp_path / name), n_rows=len(rows), dim=rows.shape[1], chunk_rows=64,
                                      shard_rows=SHARD, compressor="none")
        for shard in range(store.n_shards):
            lo, hi = store.shard_range(shard)
            store.write_shard(shard, rows[lo:hi], [f"r{i}" for i in range(lo, hi)])
        return store.url

    def applied(text_url: str, name: str) -> str:
        subs = str(tmp_path / name)
        for shard in prepare_substitutes(subs, text_url, attrs={}, dtype="float32", compressor="none",
                                         storage_options={}):
            apply_shard(model, text_url, subs, shard, {})
        return subs

    return g, model, text_store, applied


def _manifest(subs_url: str) -> dict:
    markers = EmbeddingStore.open(subs_url).markers()
    return {"shards": [{**{k: m[k] for k in ("shard", "start", "stop", "sha256")},
                        "input_sha256": m["stats"]["input_sha256"]} for m in markers]}


def test_unchanged_shards_are_carried_and_changed_ones_applied_with_the_same_bits(world):
    g, model, text_store, applied = world
    old_text = text_store("old.zarr", g.text[: 2 * SHARD])
    prev = applied(old_text, "prev.zarr")
    new_rows = g.text.copy()
    new_rows[SHARD + 3] = g.text[0]  # shard 1 changes; shard 0 does not; shard 2 is new
    new_text = text_store("new.zarr", new_rows)
    reference = applied(new_text, "reference.zarr")  # a plain apply of the new input

    subs = str(prev).replace("prev.zarr", "subs.zarr")
    prepare_substitutes(subs, new_text, attrs={}, dtype="float32", compressor="none",
                        storage_options={})
    entries = carry_entries(prev, _manifest(prev), subs, {})
    assert sorted(entries) == [0, 1]
    markers = [carry_or_apply_shard(model, new_text, subs, s, {}, prev, entries.get(s)) for s in range(3)]
    assert [m["stats"].get("carried", False) for m in markers] == [True, False, False]
    ref_markers = EmbeddingStore.open(reference).markers()
    out, ref = EmbeddingStore.open(subs), EmbeddingStore.open(reference)
    for shard, marker in enumerate(markers):
        emb, ids, _ = out.read_shard(shard)
        assert marker["sha256"] == shard_checksum(emb, list(ids)) == ref_markers[shard]["sha256"]
        assert marker["stats"]["input_sha256"] == ref_markers[shard]["stats"]["input_sha256"]
        assert emb.tobytes() == ref.read_shard(shard)[0].tobytes()
        assert marker["chunks"] == ref_markers[shard]["chunks"]


def test_a_carried_copy_that_does_not_match_its_checksum_is_applied_instead(world):
    g, model, text_store, applied = world
    text = text_store("text.zarr", g.text[:SHARD])
    prev = applied(text, "prev.zarr")
    manifest = _manifest(prev)
    emb, ids, _ = EmbeddingStore.open(text).read_shard(0)
    assert manifest["shards"][0]["input_sha256"] == input_digest(emb, ids, np.ones(SHARD, bool))
    manifest["shards"][0]["sha256"] = "0" * 64  # the earlier version's files are not what its manifest says
    subs = str(prev).replace("prev.zarr", "subs.zarr")
    prepare_substitutes(subs, text, attrs={}, dtype="float32", compressor="none", storage_options={})
    entries = carry_entries(prev, manifest, subs, {})
    marker = carry_or_apply_shard(model, text, subs, 0, {}, prev, entries[0])
    assert not marker["stats"].get("carried", False)
    prev_marker = EmbeddingStore.open(prev).marker(0)
    assert marker["sha256"] == prev_marker["sha256"]  # applied again: the same bits
    assert marker["stats"]["input_sha256"] == prev_marker["stats"]["input_sha256"]
