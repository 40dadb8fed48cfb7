"""Per-item records, the corpus manifest (parquet) and the failure-rate check."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from aniso._fs import join_url, open_url
from aniso.corpus._formats import TRUNCATED
from aniso.errors import FailureRateExceeded

__all__ = [
    "ItemRecord",
    "MANIFEST_COLUMNS",
    "records_frame",
    "manifest_url",
    "write_manifest",
    "read_manifest",
    "write_records",
    "read_records",
    "failure_rate",
    "check_failure_rate",
]

logger = logging.getLogger(__name__)

Status = Literal["ok", "failed"]
MANIFEST_COLUMNS = ("id", "source", "shard", "status", "error")
_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("shard", pa.string()), ("status", pa.string()), ("error", pa.string())]
)


@dataclass(frozen=True)
class ItemRecord:
    """What happened to one corpus item: ``status`` is ``"ok"`` or ``"failed"`` with a reason."""

    id: str
    source: str
    shard: str
    status: Status = "ok"
    error: str | None = None


def records_frame(records: Iterable[ItemRecord] | pd.DataFrame) -> pd.DataFrame:
    """Records as a DataFrame with exactly :data:`MANIFEST_COLUMNS` (in that order)."""
    if isinstance(records, pd.DataFrame):
        return records.loc[:, list(MANIFEST_COLUMNS)].reset_index(drop=True)
    rows = [(r.id, r.source, r.shard, r.status, r.error) for r in records]
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).astype(
        {"id": "string", "source": "string", "shard": "string", "status": "string", "error": "string"}
    )


def manifest_url(root: str, dataset: str, modality: str) -> str:
    """``<root>/<dataset>/corpus/<modality>/manifest.parquet``."""
    return join_url(root, dataset, "corpus", modality, "manifest.parquet")


def write_manifest(
    records: Iterable[ItemRecord] | pd.DataFrame,
    root: str,
    dataset: str,
    modality: str,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write the corpus manifest (id, source, shard, status, error) and return its URL.

    The file is written in one put (buffered, then uploaded), so a reader never sees half of it.
    """
    frame = records_frame(records)
    url = write_records(frame, manifest_url(root, dataset, modality), storage_options)
    n_failed = int((frame["status"] != "ok").sum())
    logger.info("wrote %s: %d items, %d failed", url, len(frame), n_failed)
    return url


def read_manifest(
    root: str, dataset: str, modality: str, storage_options: dict[str, Any] | None = None
) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest`."""
    return read_records(manifest_url(root, dataset, modality), storage_options)


def write_records(
    records: Iterable[ItemRecord] | pd.DataFrame, url: str, storage_options: dict[str, Any] | None = None
) -> str:
    """Write item records as one parquet file at ``url`` (buffered, then put in one write)."""
    table = pa.Table.from_pandas(records_frame(records), schema=_SCHEMA, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    with open_url(url, "wb", storage_options) as f:
        f.write(buf.getvalue())
    return url


def read_records(url: str, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Read records written by :func:`write_records` (or a manifest)."""
    with open_url(url, "rb", storage_options) as f:
        return pq.read_table(f).to_pandas()


def failure_rate(records: Iterable[ItemRecord] | pd.DataFrame) -> tuple[float, int, int]:
    """``(rate, n_failed, n_total)`` over ``records`` (rate 0 for an empty corpus)."""
    frame = records_frame(records)
    total = len(frame)
    failed = int((frame["status"] != "ok").sum())
    return (failed / total if total else 0.0), failed, total


def check_failure_rate(
    records: Iterable[ItemRecord] | pd.DataFrame | Sequence[ItemRecord],
    max_failure_rate: float,
    *,
    what: str = "corpus",
    show: int = 5,
) -> float:
    """Raise :class:`FailureRateExceeded` if more than ``max_failure_rate`` of items failed.

    The message names the rate, the threshold and the first ``show`` bad items with their
    source and reason. Returns the rate otherwise.

    A truncated webdataset tar (its ``<file>#truncated-at-<byte>`` record) lost an unknown number
    of samples after the cut: its one record could stand for any number of them, so no rate below
    100% can be vouched for and the check fails, naming the file and the byte, whatever the
    counted rate (a ``max_failure_rate`` of 1 accepts anything, a truncated tar included).
    """
    frame = records_frame(records)
    rate, failed, total = failure_rate(frame)
    cut = frame[(frame["status"] != "ok") & frame["id"].str.contains(TRUNCATED, regex=False)]
    if len(cut) and max_failure_rate < 1:
        first = cut.iloc[0]
        more = f" (and {len(cut) - 1} more truncated tar(s))" if len(cut) > 1 else ""
        raise FailureRateExceeded(
            f"{what}: {first['source']} is truncated at byte {first['id'].rsplit(TRUNCATED, 1)[1]}{more}: an "
            f"unknown number of its samples are lost, so the {failed} of {total} items counted as failed "
            f"({rate:.2%}) cannot be held to corpus.max_failure_rate={max_failure_rate:.2%}; restore the file "
            "or remove it from the corpus"
        )
    if rate > max_failure_rate:
        bad = frame[frame["status"] != "ok"].head(show)
        listing = "; ".join(f"{r.id} ({r.source}): {r.error}" for r in bad.itertuples())
        raise FailureRateExceeded(
            f"{what}: {failed} of {total} items failed ({rate:.2%}), above corpus.max_failure_rate="
            f"{max_failure_rate:.2%}; first bad items: {listing}"
        )
    if failed:
        logger.warning("%s: %d of %d items failed (%.2f%%), within the allowed rate", what, failed, total, 100 * rate)
    return rate
