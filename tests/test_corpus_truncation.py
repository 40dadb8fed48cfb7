"""A truncated webdataset tar yields error records for what is lost, never a silently shorter corpus."""

from __future__ import annotations

import io
import tarfile

import pytest

from aniso.corpus import plan_shards, read_shard
from aniso.config import CorpusSettings

N_SAMPLES = 50


def _tar_bytes() -> tuple[bytes, list[int]]:
    """50 samples (caption + 700-byte payload); also the byte offset of each sample's first header."""
    buf = io.BytesIO()
    starts = []
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for k in range(N_SAMPLES):
            starts.append(buf.tell())
            for name, data in ((f"s{k:03d}.txt", f"caption {k}".encode()), (f"s{k:03d}.bin", bytes(700))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), starts


@pytest.mark.parametrize("where", ["header boundary", "inside a member", "end-of-archive blocks"])
def test_truncated_tar_yields_error_records(tmp_path, where):
    raw, starts = _tar_bytes()
    cut = {"header boundary": starts[26], "inside a member": starts[26] + 1024 + 512 + 100,
           "end-of-archive blocks": starts[-1] + 3 * 512 + 1024}[where]
    (tmp_path / "part.tar").write_bytes(raw[:cut])
    specs = plan_shards(str(tmp_path), CorpusSettings(items_per_shard=16), modality="text")
    items = [(i, e) for spec in specs for i, e in zip(*(lambda s: (s.ids, s.errors))(read_shard(spec)))]
    ok = [i for i, e in items if e is None]
    failed = {i: e for i, e in items if e is not None}
    assert failed, "a truncated tar must not read as a shorter complete one"
    lost = [i for i in failed if "#truncated-at-" in i]
    assert lost == [f"part.tar#truncated-at-{cut}"]
    assert failed[lost[0]].startswith(f"tar truncated at byte {cut}")
    if where == "inside a member":
        assert ok == [f"s{k:03d}" for k in range(26)]
        assert failed["s026"] == "sample cut off by the end of a truncated tar"
    elif where == "header boundary":
        assert ok == [f"s{k:03d}" for k in range(26)] and len(failed) == 1
    else:
        assert len(ok) == N_SAMPLES


def test_complete_tar_has_no_error_records(tmp_path):
    raw, _ = _tar_bytes()
    (tmp_path / "part.tar").write_bytes(raw)
    spec = plan_shards(str(tmp_path), CorpusSettings(items_per_shard=64), modality="text")[0]
    assert read_shard(spec).errors == [None] * N_SAMPLES
