"""What a corpus file is and how its raw bytes split into items, shared by the planner and the
readers (:mod:`aniso.corpus._plan`, :mod:`aniso.corpus._text`, :mod:`aniso.corpus._images`).

Kept apart so that planning and reading depend on it and never on each other.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import tarfile
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TEXT_FORMATS", "IMAGE_EXTENSIONS", "TAR_EXTENSION", "TRUNCATED", "PAST_EOF", "FileRange",
    "tar_samples", "tar_item_id", "parse_json_line", "read_csv_rows", "read_csv_records",
]

#: file extension → text format
TEXT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".txt": "txt"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
TAR_EXTENSION = ".tar"


@dataclass(frozen=True)
class FileRange:
    """Items ``[start, stop)`` of one file (rows, or samples of a tar; one image file is one item).

    ``byte_start``/``byte_end``/``line_start`` locate the rows of line-based files (jsonl, txt).
    """

    url: str
    rel: str
    format: str
    start: int
    stop: int
    byte_start: int = 0
    byte_end: int = -1
    line_start: int = 0
    content: str = ""  # size + ETag/mtime of the file: an edited file changes the plan digest


#: Key prefix of the pseudo-sample that stands for the lost tail of a truncated tar.
TRUNCATED = "#truncated-at-"
#: Member name marking a sample whose data run past the end of a truncated tar.
PAST_EOF = "!past-eof"


def tar_item_id(rel: str, key: str, tar_ids: str = "key") -> str:
    """The id of the sample ``key`` of the tar at ``rel``: the key, or with ``tar_ids="path"`` the
    tar's path without ``.tar``, ``/`` and the key (unique where keys repeat across tars)."""
    return f"{posixpath.splitext(rel)[0]}/{key}" if tar_ids == "path" else key


def tar_samples(fileobj) -> list[tuple[str, dict[str, tarfile.TarInfo]]]:
    """Group a tar's members into webdataset samples ``(key, {extension: member})``, in order.

    The key is the member path up to the first ``.`` of its basename (webdataset's convention).
    A truncated tar (cut inside a member, or before its end-of-archive blocks) is never read as a
    shorter complete one: a sample whose data run past the end of the file carries a
    :data:`PAST_EOF` member, and a last pseudo-sample ``#truncated-at-<byte>`` stands for the
    samples lost after the cut (how many is unknowable), so both become error records.
    """
    size = fileobj.seek(0, 2)
    fileobj.seek(0)
    samples: list[tuple[str, dict[str, tarfile.TarInfo]]] = []
    cut: int | None = None
    with tarfile.open(fileobj=fileobj, mode="r:") as tar:
        try:
            for member in tar:
                if member.offset_data + member.size > size:
                    cut = size
                if not member.isfile():
                    continue
                folder, base = posixpath.split(member.name)
                if "." not in base:
                    continue
                stem, ext = base.split(".", 1)
                key = posixpath.join(folder, stem)
                if samples and samples[-1][0] == key:
                    samples[-1][1][ext.lower()] = member
                else:
                    samples.append((key, {ext.lower(): member}))
                if cut is not None:
                    samples[-1][1][PAST_EOF] = member
                    break
        except tarfile.ReadError:  # a header cut short
            cut = size
        if cut is None and tar.offset + tarfile.BLOCKSIZE > size:  # no end-of-archive block
            cut = size
    if cut is not None:
        samples.append((f"{TRUNCATED}{cut}", {}))
    return samples


def parse_json_line(raw: bytes) -> tuple[Any, str | None]:
    """``(record, error)`` of one jsonl line; a non-UTF-8 line still yields its record (for the id)."""
    try:
        text, error = raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        text, error = raw.decode("utf-8", errors="surrogateescape"), f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
    try:
        return json.loads(text), error
    except ValueError as exc:
        return None, error or f"invalid JSON: {exc}"


def read_csv_records(data: bytes, delimiter: str = ",") -> list[tuple[int, dict[str | None, Any]]]:
    """Parse CSV bytes into ``(line, row)`` pairs, as :class:`csv.DictReader` reads rows (blank
    lines skipped, missing fields ``None``, surplus fields under ``None``); ``line`` is the 1-based
    line of the file where the row starts (the header is line 1), for locations a person opens.
    Undecodable bytes survive as surrogates (see :func:`aniso.corpus._text.check_text`)."""
    text = data.decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return []
    records: list[tuple[int, dict[str | None, Any]]] = []
    before = reader.line_num  # lines consumed before the next row: it starts on the line after
    for fields in reader:
        if fields:
            row: dict[str | None, Any] = dict(zip(header, fields))
            row.update({name: None for name in header[len(fields):]})
            if len(fields) > len(header):
                row[None] = fields[len(header):]
            records.append((before + 1, row))
        before = reader.line_num
    return records


def read_csv_rows(data: bytes, delimiter: str = ",") -> list[dict[str | None, Any]]:
    """The rows of :func:`read_csv_records`, without their lines."""
    return [row for _, row in read_csv_records(data, delimiter)]
