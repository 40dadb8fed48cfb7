"""Reading one planned shard: its items in plan order, each with a payload or a failure reason."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from aniso._fs import filesystem
from aniso.corpus._images import read_image_range, read_tar_range
from aniso.corpus._plan import ShardSpec
from aniso.corpus._records import ItemRecord
from aniso.corpus._text import read_text_range

__all__ = ["ShardItems", "read_shard"]

logger = logging.getLogger(__name__)


@dataclass
class ShardItems:
    """The items of one shard, aligned by position (length ``spec.n_items``).

    ``payloads[i]`` is the text (text shards) or the raw image bytes (image shards), or ``None``
    when ``errors[i]`` says why the item failed.
    """

    spec: ShardSpec
    ids: list[str]
    sources: list[str]
    payloads: list
    errors: list[str | None]
    read_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def ok(self) -> list[int]:
        """Positions of the items that are still usable."""
        return [i for i, e in enumerate(self.errors) if e is None]

    def fail(self, position: int, reason: str) -> None:
        """Mark the item at ``position`` failed (the first reason wins)."""
        if self.errors[position] is None:
            self.errors[position] = reason
            self.payloads[position] = None

    def records(self) -> list[ItemRecord]:
        """One :class:`ItemRecord` per item, for the corpus manifest."""
        return [
            ItemRecord(id=i, source=s, shard=self.spec.shard_id, status="ok" if e is None else "failed", error=e)
            for i, s, e in zip(self.ids, self.sources, self.errors)
        ]


def read_shard(spec: ShardSpec) -> ShardItems:
    """Read every item of ``spec``; never raises for a bad item (its reason is recorded instead).

    Items whose id repeats an earlier id of the corpus (found at planning) fail with
    ``duplicate id``; so do repeats inside the shard that planning could not see.
    """
    t0 = time.perf_counter()
    fs, _ = filesystem(spec.corpus_url, spec.storage_options)
    raw: list[tuple] = []
    for rng in spec.ranges:
        if rng.format == "webdataset":
            raw.extend(read_tar_range(fs, rng, spec.modality, spec.text_field, spec.tar_ids))
        elif rng.format == "image":
            raw.extend(read_image_range(fs, rng))
        else:
            raw.extend(read_text_range(fs, rng, spec.text_field, spec.id_field))
    items = ShardItems(
        spec=spec,
        ids=[r[0] for r in raw],
        sources=[r[1] for r in raw],
        payloads=[r[2] for r in raw],
        errors=[r[3] for r in raw],
    )
    for k, (position, item_id) in enumerate(spec.duplicates):
        note = spec.duplicate_notes[k] if k < len(spec.duplicate_notes) else ""
        items.fail(position, f"duplicate id {item_id!r} (an earlier item has the same id{'; ' if note else ''}{note})")
    seen: set[str] = set()
    for position, item_id in enumerate(items.ids):
        if item_id in seen:
            items.fail(position, f"duplicate id {item_id!r} (an earlier item has the same id)")
        seen.add(item_id)
    items.read_seconds = time.perf_counter() - t0
    n_failed = sum(e is not None for e in items.errors)
    logger.debug("read shard %s: %d items, %d failed, %.2fs", spec.shard_id, len(items), n_failed, items.read_seconds)
    return items
