"""Chunk-aware batch iteration over a published dataset, for training loops.

Reading a published dataset one row at a time fetches a whole chunk per row (chunks are the
read unit: ``chunk_rows`` rows, 4,096 by default). :func:`iter_batches` instead reads whole chunks,
in a (seeded) shuffled chunk order, and shuffles rows within a buffer of a few chunks, so each
chunk is fetched exactly once per epoch. Chunks are dealt to ranks round-robin after the shuffle,
so across ``world_size`` ranks every row is yielded exactly once per epoch. ``shuffle="global"``
holds the rank's whole share instead and permutes all its rows at once, so each batch draws from
every chunk (memory: the share; ``bench/loader.py --global-shuffle`` measures the cost).

``aniso.published.torch_loader.PublishedIterableDataset`` wraps it for ``torch.utils.data.DataLoader``.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np

from aniso.errors import ConfigError
from aniso.published.checked import ChunkDigests, read_chunk

__all__ = ["iter_batches", "chunks_for_rank", "check_arguments", "GLOBAL"]

#: ``shuffle=GLOBAL``: one permutation of every row of the rank's epoch (see :func:`iter_batches`).
GLOBAL = "global"

logger = logging.getLogger(__name__)


def chunks_for_rank(n_chunks: int, *, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int) -> np.ndarray:
    """The chunk indices rank ``rank`` of ``world_size`` reads in one epoch, in reading order.

    The chunk order is one permutation per ``(seed, epoch)`` shared by every rank; rank ``r``
    takes positions ``r, r + world_size, ...``, so the ranks' sets partition all chunks.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
    order = np.random.default_rng([seed, epoch]).permutation(n_chunks) if shuffle else np.arange(n_chunks)
    return order[rank::world_size]


def check_arguments(**values: Any) -> None:
    """Integers where integers are meant and flags where flags are: ``batch_size=2.5`` or
    ``rank="0"`` is a ConfigError naming the argument, not a traceback deep in the loop."""
    for name, value in values.items():
        if name == "shuffle" and isinstance(value, str) and value == GLOBAL:
            continue
        if name in ("shuffle", "only_valid", "all_valid", "drop_last"):
            if not isinstance(value, (bool, np.bool_)):
                also = f" or {GLOBAL!r}" if name == "shuffle" else ""
                raise ConfigError(f"iter_batches: {name} must be True or False{also} (got {value!r})")
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"iter_batches: {name} must be an integer (got {value!r})")
        if name in ("batch_size", "buffer_chunks", "world_size") and value < 1:
            raise ConfigError(f"iter_batches: {name} must be at least 1 (got {value!r})")
        if name in ("seed", "epoch", "rank") and value < 0:
            raise ConfigError(f"iter_batches: {name} must not be negative (got {value!r})")
    if "rank" in values and "world_size" in values and values["rank"] >= values["world_size"]:
        raise ConfigError(f"iter_batches: rank {values['rank']} is not in [0, world_size={values['world_size']})")


def _as_str_array(raw: Any) -> np.ndarray:
    arr = np.asarray(raw)
    return arr if arr.dtype == object else arr.astype(object)


def iter_batches(
    group: Any,
    batch_size: int,
    *,
    shuffle: bool | str = False,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    buffer_chunks: int = 4,
    only_valid: bool = True,
    all_valid: bool = False,
    drop_last: bool = False,
    out: Any = None,
    digests: ChunkDigests | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(ids, embeddings)`` numpy batches from a published Zarr group.

    Parameters
    ----------
    group
        The Zarr group with ``embedding``, ``id`` and ``valid`` (``PublishedDataset.store.group``),
        or a mapping of those arrays (``PublishedDataset.arrays()``).
    batch_size
        Rows per batch; the last batch of a rank may be smaller unless ``drop_last``.
    shuffle, seed, epoch
        ``True``: shuffle the chunk order and the rows within a buffer of ``buffer_chunks``
        chunks, deterministically per ``(seed, epoch)``; a batch then draws from at most
        ``buffer_chunks`` (+1) chunks. ``"global"``: read every chunk of the rank's epoch first
        and draw each batch from one permutation of all its rows, so every batch draws from every
        chunk; memory is the rank's whole share (``n_rows / world_size × d`` values, twice that
        while the chunks are joined) and the first batch waits for the whole read.
    rank, world_size
        This reader's share: chunks are dealt round-robin, so every row is read exactly once per
        epoch across all ranks (rank shares differ by at most one chunk).
    buffer_chunks
        Chunks held (and shuffled together) at once; memory is ``buffer_chunks × chunk_rows × d``.
    only_valid
        Skip rows whose ``valid`` flag is False (items that failed upstream; stored as zeros).
    all_valid
        The caller knows every row is valid (a manifest whose ``valid_rows`` equals ``n_rows``):
        ``valid`` is not read at all (it is ~10% of a local epoch's reads otherwise).
    drop_last
        Drop a final batch smaller than ``batch_size``.
    out
        Optional allocator ``out(shape, dtype) -> ndarray`` for shuffled batches (the torch
        loader passes shared-memory tensors, so a batch crosses to the main process uncopied).
    digests
        The version's per-chunk digests (``PublishedDataset.digests``): every chunk read is
        checked, and a missing, truncated or swapped one raises StoreCorrupt naming it (or
        StoreNotFound when the version was removed) instead of yielding its fill values or
        another shard's rows. ``None`` reads unchecked.

    Raises
    ------
    ConfigError
        A bad argument (``batch_size=2.5``, ``rank=-1``, ...), named; raised on the call, before
        anything is read.

    Yields
    ------
    ids : numpy.ndarray
        ``(b,)`` object array of ``str``.
    embeddings : numpy.ndarray
        ``(b, d)`` in the stored dtype.
    """
    check_arguments(batch_size=batch_size, buffer_chunks=buffer_chunks, seed=seed, epoch=epoch, rank=rank,
                    world_size=world_size, shuffle=shuffle, only_valid=only_valid, all_valid=all_valid,
                    drop_last=drop_last)
    return _batches(group, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, rank=rank, world_size=world_size,
                    buffer_chunks=buffer_chunks, only_valid=only_valid, all_valid=all_valid, drop_last=drop_last,
                    out=out, digests=digests)


def _batches(group: Any, batch_size: int, *, shuffle: bool | str, seed: int, epoch: int, rank: int, world_size: int,
             buffer_chunks: int, only_valid: bool, all_valid: bool, drop_last: bool, out: Any,
             digests: ChunkDigests | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The generator behind :func:`iter_batches` (arguments already checked)."""
    emb_arr, id_arr = group["embedding"], group["id"]
    valid_arr = group["valid"] if only_valid and not all_valid and "valid" in group else None
    n_rows, chunk_rows = int(emb_arr.shape[0]), int(emb_arr.chunks[0])
    n_chunks = -(-n_rows // chunk_rows)
    order = chunks_for_rank(n_chunks, shuffle=bool(shuffle), seed=seed, epoch=epoch, rank=rank, world_size=world_size)
    if shuffle == GLOBAL:  # one buffer: the whole epoch share, permuted as one
        buffer_chunks = max(len(order), 1)
    rng = np.random.default_rng([seed, epoch, rank, world_size, 1])
    carry_ids = np.empty(0, object)
    carry_emb = np.empty((0, int(emb_arr.shape[1])), emb_arr.dtype)
    for pos in range(0, len(order), buffer_chunks):
        ids_parts, emb_parts = [carry_ids], [carry_emb]
        for chunk in order[pos : pos + buffer_chunks]:
            chunk = int(chunk)
            emb = read_chunk(emb_arr, "embedding", chunk, digests)
            ids = _as_str_array(read_chunk(id_arr, "id", chunk, digests))
            if valid_arr is not None:
                keep = read_chunk(valid_arr, "valid", chunk, digests)
                if not keep.all():
                    emb, ids = emb[keep], ids[keep]
            emb_parts.append(emb)
            ids_parts.append(ids)
        emb = np.concatenate(emb_parts)
        ids = np.concatenate(ids_parts)
        last = pos + buffer_chunks >= len(order)
        full = len(ids) if last and not drop_last else (len(ids) // batch_size) * batch_size
        # one gather per batch (shuffled) or a view (in order): the buffer is never copied twice
        perm = rng.permutation(len(ids)) if shuffle else None
        for start in range(0, full, batch_size):
            stop = min(start + batch_size, full)
            if perm is None:
                yield ids[start:stop], emb[start:stop] if out is None else _copy(emb[start:stop], out)
            else:
                take = perm[start:stop]
                yield ids[take], _gather(emb, take, out)
        rest = perm[full:] if perm is not None else slice(full, None)
        carry_ids, carry_emb = ids[rest], emb[rest]


def _copy(block: np.ndarray, out: Any) -> np.ndarray:
    dest = out(block.shape, block.dtype)
    dest[...] = block
    return dest


def _gather(emb: np.ndarray, take: np.ndarray, out: Any) -> np.ndarray:
    """``emb[take]``, written into ``out(shape, dtype)`` when an allocator is given."""
    if out is None:
        return emb[take]
    dest = out((len(take), emb.shape[1]), emb.dtype)
    np.take(emb, take, axis=0, out=dest)
    return dest
