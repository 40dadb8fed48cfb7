"""aniso._fs: whole-object writes and the link-or-copy helper, on a local directory and on the
loopback S3 server."""

from __future__ import annotations

import os

import pytest

from aniso._fs import filesystem, join_url, link_or_copy, open_url, write_atomic


def test_write_atomic_replaces_the_whole_object(root):
    url, options = root
    target = join_url(url, "dir", "file.json")
    write_atomic(target, "old", options)
    write_atomic(target, b"new bytes", options)
    with open_url(target, "rb", options) as f:
        assert f.read() == b"new bytes"
    fs, path = filesystem(url, options)
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(join_url(path, "dir"), detail=False)] == ["file.json"]


def test_a_failed_local_write_leaves_the_old_object_and_no_temporary(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()  # os.replace cannot put a file over a non-empty directory
    (target / "inside").write_text("keep")
    with pytest.raises(OSError):
        write_atomic(str(target), b"payload")
    assert sorted(os.listdir(tmp_path)) == ["taken"] and (target / "inside").read_text() == "keep"


def test_link_or_copy_places_the_same_bytes(root):
    url, options = root
    fs, _ = filesystem(url, options)
    source, target = join_url(url, "a.bin"), join_url(url, "b", "a.bin")
    write_atomic(source, b"\x00\x01payload", options)
    link_or_copy(fs, filesystem(source, options)[1], filesystem(target, options)[1])
    with open_url(target, "rb", options) as f:
        assert f.read() == b"\x00\x01payload"
