"""Text readers: jsonl, parquet, csv/tsv and plain txt rows, with a reason for every bad row."""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq

from aniso.corpus._formats import FileRange, parse_json_line, read_csv_records

__all__ = ["TextItem", "read_text_range", "check_text"]

#: ``(id, source, text or None, error or None)``
TextItem = tuple[str, str, "str | None", "str | None"]


def check_text(value: Any, field: str) -> tuple[str | None, str | None]:
    """``(text, None)`` for a usable text, else ``(None, reason)``."""
    if value is None:
        return None, f"no {field!r} field"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"
    if not isinstance(value, str):
        return None, f"{field!r} is a {type(value).__name__}, not a string"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None, "not valid UTF-8"
    if not value.strip():
        return None, "empty text"
    return value, None


def _read_lines(fs, rng: FileRange, text_field: str, id_field: str | None) -> list[TextItem]:
    with fs.open(fs._strip_protocol(rng.url), "rb") as f:
        f.seek(rng.byte_start)
        blob = f.read(rng.byte_end - rng.byte_start) if rng.byte_end >= 0 else f.read()
    items: list[TextItem] = []
    lineno = rng.line_start
    lines = blob.split(b"\n")
    if blob.endswith(b"\n"):
        lines.pop()
    for raw in lines:
        if not raw.strip():
            lineno += 1
            continue
        default_id = f"{rng.rel}:{lineno}"  # an id: the 0-based line index, stable across releases
        source = f"{rng.url}#L{lineno + 1}"  # a location a person opens: the 1-based line number
        if rng.format == "txt":
            text, error = check_text(raw, "text")
            items.append((default_id, source, text, error))
        else:
            record, error = parse_json_line(raw)
            rid = default_id
            if isinstance(record, dict) and id_field and record.get(id_field) not in (None, ""):
                rid = str(record[id_field])
            if error is None and not isinstance(record, dict):
                error = "JSON line is not an object"
            if error is not None:
                items.append((rid, source, None, error))
            else:
                text, error = check_text(record.get(text_field), text_field)
                items.append((rid, source, text, error))
        lineno += 1
    return items


def _read_table(fs, rng: FileRange, text_field: str, id_field: str | None) -> list[TextItem]:
    path = fs._strip_protocol(rng.url)
    if rng.format == "parquet":
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            columns = [c for c in (text_field, id_field) if c and c in names]
            table = pf.read(columns=columns).slice(rng.start, rng.stop - rng.start)
        texts = table.column(text_field).to_pylist() if text_field in names else [None] * table.num_rows
        ids = table.column(id_field).to_pylist() if id_field and id_field in names else [None] * table.num_rows
        # parquet has rows, not lines: its location is the 0-based row index pyarrow and pandas use
        places = [f"row{rng.start + k}" for k in range(table.num_rows)]
    else:
        with fs.open(path, "rb") as f:
            records = read_csv_records(f.read(), delimiter="\t" if rng.rel.lower().endswith(".tsv") else ",")
        records = records[rng.start : rng.stop]
        texts = [row.get(text_field) for _, row in records]
        ids = [row.get(id_field) if id_field else None for _, row in records]
        places = [f"L{line}" for line, _ in records]  # the 1-based line where the row starts
    items: list[TextItem] = []
    for k, (value, rid, place) in enumerate(zip(texts, ids, places)):
        text, error = check_text(value, text_field)
        items.append((str(rid) if rid not in (None, "") else f"{rng.rel}:{rng.start + k}", f"{rng.url}#{place}",
                      text, error))
    return items


def read_text_range(fs, rng: FileRange, text_field: str, id_field: str | None) -> list[TextItem]:
    """The items of one text :class:`FileRange`; a missing file fails every item in it."""
    try:
        if rng.format in ("jsonl", "txt"):
            items = _read_lines(fs, rng, text_field, id_field)
        else:
            items = _read_table(fs, rng, text_field, id_field)
    except FileNotFoundError:
        return [(f"{rng.rel}:{rng.start + k}", rng.url, None, f"missing file: {rng.url}") for k in range(rng.stop - rng.start)]
    if len(items) != rng.stop - rng.start:
        # The file changed since planning: keep the plan's item count so shards stay aligned.
        items = (items + [(f"{rng.rel}:{rng.start + k}", rng.url, None, "file changed since planning")
                          for k in range(len(items), rng.stop - rng.start)])[: rng.stop - rng.start]
    return items
