"""Precomputed embeddings as pipeline input: ``.npy`` files, clip-retrieval folders, Zarr stores.

Every input opens as an :class:`EmbeddingSource` with a row count, a dimension, random access
to row ranges (so one task can import one shard without reading the rest) and a fingerprint
that enters the run key: a hash of the bytes (size and sha256 of each file, plus a folder's part
names), the same for the same bytes on any filesystem. Accepted forms:

* a single ``.npy`` file (any float dtype; read by byte ranges, so it works on object storage);
* a folder of ``.npy`` files in clip-retrieval's layout (``text_emb/text_emb_0.npy``, ...), with
  ids from the sibling ``metadata/metadata_<i>.parquet`` when present (its first column among
  ``id``, ``key``, ``image_path``, ``url``, or the column named by ``ids``; a metadata file with
  none of them is an error naming its columns, unless ``ids="row-number"``), row numbers when
  no part has metadata. Ids come from one source: a folder where some parts have metadata and
  others have none is an error naming the first part without it (row numbers beside real ids
  would read as ids), unless ``ids="row-number"``; a null, NaN or blank id is an error naming the
  metadata file, the row and the column. Metadata files are part of the fingerprint, so corrected
  ids start a new run;
* an aniso Zarr embedding store (see :mod:`aniso.io.store`).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq

from aniso._fs import filesystem, join_url
from aniso.errors import InputError, StoreNotFound
from aniso.io.store import EmbeddingStore

__all__ = ["InputForm", "input_form", "EmbeddingSource", "NpyPart", "open_embedding_source", "is_embedding_input", "read_npy_header"]

_ID_COLUMNS = ("id", "key", "image_path", "url")
#: ``ids`` value that takes row numbers as ids even when metadata exist.
ROW_NUMBER = "row-number"


@dataclass(frozen=True)
class InputForm:
    """What an input URL holds, decided from its listing alone (no data read).

    The one place that decides what an embedding input is: :func:`open_embedding_source`,
    :func:`is_embedding_input` and the preflight's header-only shape check all start here.
    """

    #: ``"npy"`` (one file or a clip-retrieval folder), ``"zarr"`` (an aniso store) or
    #: ``"corpus"`` (anything else: raw text or images for the embed stage).
    kind: Literal["npy", "zarr", "corpus"]
    #: The ``.npy`` parts (URLs, natural order) of an ``"npy"`` input.
    files: tuple[str, ...] = ()


def input_form(url: str, storage_options: dict[str, Any] | None = None) -> InputForm:
    """Classify ``url``: a ``.npy`` file, a folder of ``.npy`` files, a Zarr store, or a corpus.

    A ``.npy`` URL is classified by its name (whether it exists is checked by whoever opens it).
    """
    fs, path = filesystem(url, storage_options or {})
    if path.endswith(".npy"):
        return InputForm("npy", (url,))
    if not fs.isdir(path):
        return InputForm("corpus")
    if fs.exists(join_url(path, "zarr.json")):
        return InputForm("zarr")
    files = sorted((f for f in fs.ls(path, detail=False) if f.endswith(".npy")), key=_natural_key)
    return InputForm("npy", tuple(_with_scheme(url, f) for f in files)) if files else InputForm("corpus")


@dataclass(frozen=True)
class NpyPart:
    """One ``.npy`` file: where its rows start in the file and in the whole input."""

    url: str
    rows: int
    dim: int
    dtype: np.dtype
    data_offset: int
    first_row: int
    ids_url: str | None = None
    id_column: str | None = None


@dataclass
class EmbeddingSource:
    """A random-access view over an embedding input (see the module docstring)."""

    url: str
    kind: str
    n_rows: int
    dim: int
    storage_options: dict[str, Any] = field(default_factory=dict)
    parts: list[NpyPart] = field(default_factory=list)
    store: EmbeddingStore | None = None
    fingerprint: str = ""

    # -- reading ---------------------------------------------------------------------------
    def read_rows(self, start: int, stop: int) -> tuple[np.ndarray, list[str]]:
        """Rows ``[start, stop)`` as ``(embedding, ids)``; raises InputError naming bad rows."""
        if self.store is not None:
            emb, ids, valid = self.store.read_rows(start, stop)
            return emb[valid], list(ids[valid])
        emb = self.read_embedding(start, stop)
        bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
        if bad.size:
            raise self.nonfinite_error(start, stop, bad)
        return emb, self.read_ids(start, stop)

    def read_embedding(self, start: int, stop: int) -> np.ndarray:
        """float32 rows ``[start, stop)`` of a ``.npy`` input, by byte ranges (not validated)."""
        blocks = []
        for part in self.parts:
            lo, hi = max(start, part.first_row), min(stop, part.first_row + part.rows)
            if lo < hi:
                blocks.append(_read_npy_rows(part, lo - part.first_row, hi - part.first_row, self.storage_options))
        if not blocks:
            return np.empty((0, self.dim), np.float32)
        if len(blocks) == 1:
            return blocks[0].astype(np.float32, copy=False)
        return np.concatenate(blocks, dtype=np.float32)

    def read_ids(self, start: int, stop: int) -> list[str]:
        """The ids of rows ``[start, stop)`` of a ``.npy`` input."""
        ids: list[str] = []
        for part in self.parts:
            lo, hi = max(start, part.first_row), min(stop, part.first_row + part.rows)
            if lo < hi:
                ids.extend(_part_ids(part, lo - part.first_row, hi - part.first_row, self.storage_options))
        return ids

    def locate(self, row: int) -> tuple[str, int]:
        """``(file URL, row within that file)`` of a global row."""
        for part in self.parts:
            if part.first_row <= row < part.first_row + part.rows:
                return part.url, row - part.first_row
        return self.url, row

    def nonfinite_error(self, start: int, stop: int, bad: np.ndarray) -> InputError:
        """The InputError for rows ``start + bad`` holding NaN or Inf (names file and row)."""
        url, row = self.locate(start + int(bad[0]))
        return InputError(f"{url}: row {row} contains NaN or Inf ({bad.size} bad row(s) in rows [{start}, {stop}))")

    def __iter__(self):
        step = 65536
        for start in range(0, self.n_rows, step):
            yield self.read_rows(start, min(start + step, self.n_rows))[0]


def open_embedding_source(
    url: str, storage_options: dict[str, Any] | None = None, *, what: str = "input", ids: str = "auto",
) -> EmbeddingSource:
    """Open ``url`` as an embedding input; errors name the file and the problem.

    ``ids`` chooses the id column of clip-retrieval metadata: ``"auto"`` (the first of ``id``,
    ``key``, ``image_path``, ``url``), a column name, or ``"row-number"``.
    """
    options = storage_options or {}
    fs, path = filesystem(url, options)
    if not fs.exists(path):
        raise InputError(f"{what}: {url} does not exist")
    form = input_form(url, options)
    if form.kind == "zarr":
        try:
            store = EmbeddingStore.open(url, storage_options=options)
        except StoreNotFound as exc:
            raise InputError(f"{what}: {exc}") from exc
        markers = store.markers() if store.completed_shards() else []
        digest = hashlib.sha256(json.dumps([m.get("sha256") for m in markers] + [list(store.shape)]).encode())
        if not store.is_complete():
            raise InputError(f"{what}: embedding store {url} is incomplete ({len(store.completed_shards())}/{store.n_shards} shards)")
        return EmbeddingSource(url, "zarr", store.n_rows, store.dim, options, store=store, fingerprint=digest.hexdigest())
    if form.kind == "corpus":
        if fs.isdir(path):
            raise InputError(f"{what}: folder {url} holds no .npy files")
        raise InputError(f"{what}: {url} is neither a .npy file, a folder of .npy files nor a Zarr store")
    urls = list(form.files)
    parts: list[NpyPart] = []
    digest = hashlib.sha256()
    first = 0
    for part_url in urls:
        part = read_npy_header(part_url, options, first_row=first)
        meta_url = _metadata_for(part_url, options)
        column = _id_column(meta_url, ids, options, what) if meta_url else None
        part = NpyPart(**{**part.__dict__, "ids_url": meta_url if column else None, "id_column": column})
        if parts and part.dim != parts[0].dim:
            raise InputError(f"{what}: {part_url} has dimension {part.dim}, but {parts[0].url} has {parts[0].dim}")
        # a folder's part names order its rows (and pair them with metadata); one file's name is not content
        name = posixpath.basename(part_url) if len(urls) > 1 or not url.endswith(".npy") else ""
        digest.update(f"{name}|{_content_tag(part_url, options)}".encode())
        if meta_url:  # the ids are part of the input: corrected metadata is a different input
            digest.update(f"|{posixpath.basename(meta_url)}|{column}|{_content_tag(meta_url, options)}".encode())
        parts.append(part)
        first += part.rows
    if first == 0:
        raise InputError(f"{what}: {url} holds no rows (empty input)")
    _check_one_id_source(parts, what)
    return EmbeddingSource(url, "npy", first, parts[0].dim, options, parts=parts, fingerprint=digest.hexdigest())


def is_embedding_input(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """True for precomputed embeddings (a ``.npy`` file, a Zarr store, a folder of ``.npy``
    files); False for anything else, which the pipeline treats as a raw corpus to embed."""
    return input_form(url, storage_options).kind != "corpus"


# -- helpers -----------------------------------------------------------------------------------
def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _with_scheme(base_url: str, path: str) -> str:
    return f"{base_url.split('://', 1)[0]}://{path}" if "://" in base_url else path


def _content_tag(url: str, options: dict[str, Any]) -> str:
    """What identifies a file's content: its size and the sha256 of its bytes.

    Computed from the bytes on every filesystem, so equal bytes give equal tags wherever they
    live (a local file and its copy on S3 are the same input). Never the modification time, the
    path or an object store's ETag (which depends on how the object was uploaded): a copied,
    moved or touched file with the same bytes is the same input, and the run resumes.
    """
    fs, path = filesystem(url, options)
    digest = hashlib.sha256()
    size = 0
    with fs.open(path, "rb", block_size=_HASH_BLOCK) as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            digest.update(block)
            size += len(block)
    return f"{size}:{digest.hexdigest()}"


#: Read size of the content hash (one sequential pass; ranged GETs of this size on S3).
_HASH_BLOCK = 16 << 20


def read_npy_header(url: str, options: dict[str, Any], *, first_row: int = 0) -> NpyPart:
    """The part a ``.npy`` file is, from its header (validated: 2-D, C order, float, not truncated)."""
    fs, path = filesystem(url, options)
    with fs.open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(f)
        except ValueError as exc:
            raise InputError(f"{url} is not a valid .npy file: {exc}") from exc
        offset = f.tell()
    if len(shape) != 2:
        raise InputError(f"{url}: expected a 2-D (rows, dim) array, got shape {shape}")
    if fortran:
        raise InputError(f"{url}: Fortran-ordered arrays are not supported; save with C order")
    if dtype.kind != "f":
        raise InputError(f"{url}: expected floating-point embeddings, got dtype {dtype}")
    size = fs.info(path).get("size")
    expected = offset + shape[0] * shape[1] * dtype.itemsize
    if size is not None and size < expected:
        raise InputError(f"{url} is truncated: {size} bytes, the header promises {expected}")
    return NpyPart(url, int(shape[0]), int(shape[1]), dtype, offset, first_row)


def _read_npy_rows(part: NpyPart, start: int, stop: int, options: dict[str, Any]) -> np.ndarray:
    fs, path = filesystem(part.url, options)
    row_bytes = part.dim * part.dtype.itemsize
    with fs.open(path, "rb") as f:
        f.seek(part.data_offset + start * row_bytes)
        raw = f.read((stop - start) * row_bytes)
    if len(raw) != (stop - start) * row_bytes:
        raise InputError(f"{part.url}: rows [{start}, {stop}) could not be read in full (file truncated)")
    return np.frombuffer(raw, dtype=part.dtype).reshape(stop - start, part.dim)


def _metadata_candidate(npy_url: str) -> str | None:
    """clip-retrieval: ``x/text_emb/text_emb_3.npy`` ↔ ``x/metadata/metadata_3.parquet`` (None: the
    file name has no ``_<i>`` index, so no metadata file can belong to it)."""
    folder, name = posixpath.split(npy_url)
    match = re.search(r"_(\d+)\.npy$", name)
    if not match:
        return None
    candidate = posixpath.join(posixpath.dirname(folder), "metadata", f"metadata_{match.group(1)}.parquet")
    if "://" in npy_url:
        candidate = npy_url.split("://", 1)[0] + "://" + candidate.split("://", 1)[1]
    return candidate


def _metadata_for(npy_url: str, options: dict[str, Any]) -> str | None:
    """The metadata file of a ``.npy`` part, when it exists."""
    candidate = _metadata_candidate(npy_url)
    if candidate is None:
        return None
    fs, path = filesystem(candidate, options)
    return candidate if fs.exists(path) else None


def _check_one_id_source(parts: list[NpyPart], what: str) -> None:
    """Refuse an input whose parts take ids from different sources (metadata here, row numbers
    there): a row number beside real ids reads as an id and may even equal one."""
    with_ids = [p for p in parts if p.ids_url is not None]
    without = [p for p in parts if p.ids_url is None]
    if with_ids and without:
        lacking = without[0]
        looked = _metadata_candidate(lacking.url)
        where = f"no {looked}" if looked else "no metadata file (its name has no _<i> index)"
        raise InputError(
            f"{what}: {lacking.url} has {where}, but {with_ids[0].ids_url} gives ids to {with_ids[0].url} "
            f"({len(without)} of {len(parts)} part(s) lack metadata); add the missing metadata, or set "
            f"corpus.embedding_ids={ROW_NUMBER} to use row numbers for every part"
        )


def _id_column(meta_url: str, ids: str, options: dict[str, Any], what: str) -> str | None:
    """The id column of a metadata file (None: row numbers); an unrecognised one is an error."""
    if ids == ROW_NUMBER:
        return None
    fs, path = filesystem(meta_url, options)
    with fs.open(path, "rb") as f:
        try:
            names = pq.ParquetFile(f).schema_arrow.names
        except Exception as exc:  # pyarrow raises several types for a damaged footer
            raise InputError(f"{what}: {meta_url} is not a readable parquet file: {exc}") from exc
    wanted = _ID_COLUMNS if ids == "auto" else (ids,)
    column = next((c for c in wanted if c in names), None)
    if column is None:
        looked = f"none of the id columns {list(_ID_COLUMNS)}" if ids == "auto" else f"no column {ids!r}"
        raise InputError(
            f"{what}: {meta_url} has {looked} (columns found: {names}); name the id column with "
            f"corpus.embedding_ids=<column>, or set corpus.embedding_ids={ROW_NUMBER} to use row numbers"
        )
    return column


def _part_ids(part: NpyPart, start: int, stop: int, options: dict[str, Any]) -> list[str]:
    if part.ids_url is None:
        return [str(part.first_row + i) for i in range(start, stop)]
    fs, path = filesystem(part.ids_url, options)
    with fs.open(path, "rb") as f:
        # only the footer and the id column are read, not captions and other metadata
        meta = pq.ParquetFile(f)
        rows = meta.metadata.num_rows
        if rows != part.rows:
            raise InputError(
                f"ids do not match embeddings: {part.ids_url} has {rows} rows, {part.url} has {part.rows}"
            )
        column = part.id_column or next((c for c in _ID_COLUMNS if c in meta.schema_arrow.names), None)
        if column is None:  # a part described before id columns were recorded; checked at open now
            raise InputError(f"{part.ids_url} has none of the id columns {list(_ID_COLUMNS)}")
        values = meta.read(columns=[column]).column(0).slice(start, stop - start)
    if _plain_text(values):  # the common case, checked column-wise: about 2x faster than per value
        return values.to_pylist()
    return [_id_text(v, part.ids_url, start + k, column) for k, v in enumerate(values.to_pylist())]


def _plain_text(values: Any) -> bool:
    """Whether an id column slice is text with no null and no blank value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)) or values.null_count:
        return False
    return len(values) == 0 or not pc.any(pc.equal(pc.utf8_trim_whitespace(values), "")).as_py()


def _id_text(value: Any, url: str, row: int, column: str) -> str:
    """An id value as text; a null, NaN, blank or undecodable one is an InputError naming the row
    (``str`` would publish it as ``"None"``, ``"nan"`` or ``""``)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{url}: row {row} has a non-UTF-8 id (column {column!r}, byte {exc.start}); "
                             f"every row needs an id: fix the metadata, or set corpus.embedding_ids={ROW_NUMBER} "
                             "to use row numbers") from None
    if value is None or (isinstance(value, float) and value != value) or not str(value).strip():
        shown = "null" if value is None else "NaN" if isinstance(value, float) else f"blank ({value!r})"
        raise InputError(f"{url}: row {row} has a {shown} id (column {column!r}); every row needs an id: "
                         f"fix the metadata, or set corpus.embedding_ids={ROW_NUMBER} to use row numbers")
    return str(value)
