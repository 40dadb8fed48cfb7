"""A torch ``IterableDataset`` over a published dataset (imports torch; see :mod:`aniso.published.loader`).

Each DataLoader worker process opens the store itself, once, on its first iteration: an opened
store (its fsspec filesystem, event loop and connection pool) is never shared across processes,
which is what broke ``DataLoader(num_workers=2)`` over S3 ("attached to a different loop").
Use ``multiprocessing_context="spawn"`` (or ``"forkserver"``) when the training process runs
threads (an S3 client, Dask, Prefect): a forked worker inherits their locks mid-use.

:class:`PublishedDataLoader` is the fast way to use it: workers hand whole blocks to the training
process through reused shared memory (``docs/format.md``, "Loading for training").

Example
-------
>>> ds = PublishedIterableDataset("s3://bucket/aniso", "coco", batch_size=1024, shuffle=True)  # doctest: +SKIP
>>> loader = PublishedDataLoader(ds, num_workers=2)                                              # doctest: +SKIP
>>> for epoch in range(3):                                                                      # doctest: +SKIP
...     for ids, emb in loader: ...
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from aniso.published.loader import check_arguments, iter_batches

__all__ = ["PublishedDataLoader", "PublishedIterableDataset"]


def _new_shared(shape: tuple[int, int], dtype: np.dtype) -> torch.Tensor:
    """An uninitialised tensor in shared memory (``share_memory_()`` on a fresh tensor would copy)."""
    torch_dtype = torch.from_numpy(np.empty(0, dtype)).dtype
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return torch.empty(0, dtype=torch_dtype).set_(storage).view(shape)


class _SharedBatches:
    """Allocates each shuffled batch in shared memory: sending it to the main process copies nothing."""

    def __init__(self) -> None:
        self.last: torch.Tensor | None = None

    def __call__(self, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        self.last = _new_shared(shape, dtype)
        return self.last.numpy()

    def tensor(self, emb: np.ndarray) -> torch.Tensor:
        last = self.last
        if last is not None and last.data_ptr() == emb.ctypes.data and tuple(last.shape) == emb.shape:
            return last
        return torch.from_numpy(emb)


class _BlockRing:
    """A worker's ring of shared-memory blocks, reused once the main process has copied them out.

    Fresh shared memory costs a page fault per page, and sending a block sends a file descriptor
    through a socket: together as much as reading the block (``bench/loader.py``). So each block
    crosses to the main process once; afterwards a batch is only ``(worker, slot, seq, rows)``.

    Protocol, with two shared arrays the main process writes (:class:`PublishedDataLoader`):

    * ``acks[worker]``: a watermark, raised to ``seq + 1`` after the main process copied block
      ``seq`` out. Block ``seq`` goes to slot ``seq % slots``, overwriting block ``seq - slots``
      only once ``acks[worker] > seq - slots``. A slot not acknowledged within ``wait_s`` (the
      main process stopped an epoch early, or is slow) is replaced by a fresh block, so a block is
      never overwritten while in use.
    * ``cached[worker, slot]``: the generation (the ``seq`` that allocated the slot's block) the
      main process holds. The block tensor is sent with a batch until it is; a batch dropped on
      the way (an epoch stopped early) is just sent again.
    """

    def __init__(self, acks: torch.Tensor, cached: torch.Tensor, worker: int, wait_s: float = 0.05) -> None:
        self.acks, self.cached, self.worker, self.wait_s = acks, cached, worker, wait_s
        self.blocks: list[torch.Tensor | None] = [None] * cached.shape[1]
        self.generation = [-1] * cached.shape[1]
        self.seq = -1
        self.last: torch.Tensor | None = None

    def __call__(self, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        """Allocator for :func:`aniso.published.loader.iter_batches`: the next slot's block, ``shape[0]`` rows."""
        self.seq += 1
        slot = self.seq % len(self.blocks)
        block = self.blocks[slot]
        fits = block is not None and block.numpy().dtype == dtype and block.shape[1] == shape[1] \
            and block.shape[0] >= shape[0]
        if not (fits and self._released(self.seq - len(self.blocks))):
            rows = max(shape[0], block.shape[0] if fits else 0)
            block = self.blocks[slot] = _new_shared((rows, shape[1]), dtype)
            self.generation[slot] = self.seq
        self.last = block[: shape[0]]
        return self.last.numpy()

    def message(self, ids: list[str], emb: np.ndarray) -> tuple[Any, ...]:
        """What crosses to the main process for the batch ``(ids, emb)`` just filled."""
        slot = self.seq % len(self.blocks)
        if self.last is None or emb.ctypes.data != self.last.data_ptr() or emb.shape != tuple(self.last.shape):
            return ids, torch.from_numpy(emb)  # not a ring block (nothing to acknowledge)
        gen = self.generation[slot]
        block = None if int(self.cached[self.worker, slot]) == gen else self.blocks[slot]
        return ids, block, self.worker, slot, gen, self.seq, emb.shape[0]

    def _released(self, seq: int) -> bool:
        deadline = time.monotonic() + self.wait_s
        while int(self.acks[self.worker]) <= seq:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0002)
        return True


class PublishedIterableDataset(IterableDataset):
    """``(ids, embeddings)`` batches of a published dataset; use with ``DataLoader(batch_size=None)``.

    Parameters
    ----------
    root, dataset, version, storage_options
        As for :func:`aniso.open_published`.
    batch_size, shuffle, seed, buffer_chunks, only_valid, drop_last
        As for :func:`aniso.published.loader.iter_batches` (with ``shuffle="global"`` each
        DataLoader worker permutes its own share of the chunks: a batch draws from every chunk
        of one worker's share).
    rank, world_size
        The distributed rank of this process; DataLoader workers split the rank's share further,
        so every row is yielded exactly once per epoch over all ranks and workers.
    check_chunks
        Check every chunk read against the manifest's digests (a missing, truncated or swapped
        chunk raises StoreCorrupt). Off only to measure what the check costs (``bench/loader.py``).
    """

    def __init__(
        self,
        root: str,
        dataset: str,
        *,
        batch_size: int,
        version: str | None = None,
        storage_options: dict[str, Any] | None = None,
        shuffle: bool | str = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        buffer_chunks: int = 4,
        only_valid: bool = True,
        drop_last: bool = False,
        check_chunks: bool = True,
    ) -> None:
        super().__init__()
        check_arguments(batch_size=batch_size, buffer_chunks=buffer_chunks, seed=seed, rank=rank,
                        world_size=world_size, shuffle=shuffle, only_valid=only_valid, drop_last=drop_last)
        self.root, self.dataset, self.version = root, dataset, version
        self.storage_options = dict(storage_options or {})
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.buffer_chunks, self.only_valid, self.drop_last = buffer_chunks, only_valid, drop_last
        self.check_chunks = check_chunks
        self.epoch = 0
        # set by PublishedDataLoader: yield (ids, block, worker, seq) from a ring of shared blocks
        self._ring_state: tuple[torch.Tensor, torch.Tensor] | None = None  # (acks, cached)
        self._ring: _BlockRing | None = None
        self._passes = 0  # iterations since set_epoch in this process (persistent workers)
        self._opened: tuple[int, Any] | None = None
        if version is None:  # pin the version now, so every worker reads the same one
            from aniso.io.layout import DatasetLayout
            from aniso.published.dataset import read_latest

            pointer = read_latest(DatasetLayout(root, dataset), self.storage_options)
            self.version = pointer["version"] if pointer else None

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (call before iterating, like ``DistributedSampler.set_epoch``).

        Persistent workers never see a later ``set_epoch`` (they hold their own copy), so each
        new pass over the dataset in a process also advances the epoch by one by itself.
        """
        self.epoch = epoch
        self._passes = 0

    def _published(self) -> Any:
        if self._opened is None or self._opened[0] != os.getpid():
            from aniso.published.dataset import open_published

            options = dict(self.storage_options)
            if self.root.split("://", 1)[0] not in ("file", self.root):  # remote: a fresh filesystem
                options.setdefault("skip_instance_cache", True)
            self._opened = (os.getpid(), open_published(self.root, self.dataset, version=self.version,
                                                        storage_options=options))
        return self._opened[1]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_opened"] = None  # never ship an opened store to another process
        state["_ring"] = None
        return state

    def __iter__(self) -> Iterator[tuple[list[str], torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is None:
            shared = None
        elif self._ring_state is not None:
            shared = self._ring = self._ring or _BlockRing(*self._ring_state, worker)
        else:
            shared = _SharedBatches()
        epoch = self.epoch + self._passes
        self._passes += 1
        published = self._published()
        for ids, emb in iter_batches(
            published.arrays(valid=published.needs_valid(self.only_valid)), self.batch_size,
            all_valid=published.all_valid, digests=published.digests if self.check_chunks else None,
            shuffle=self.shuffle, seed=self.seed, epoch=epoch, rank=self.rank * workers + worker,
            world_size=self.world_size * workers, buffer_chunks=self.buffer_chunks, only_valid=self.only_valid,
            drop_last=self.drop_last, out=shared,
        ):
            if published.lease is not None:
                published.lease.renew()  # a time check; a write every quarter lease
            if isinstance(shared, _BlockRing):
                yield shared.message(ids.tolist(), emb)
            else:
                yield ids.tolist(), shared.tensor(emb) if shared is not None else torch.from_numpy(emb)


def _as_is(item: Any) -> Any:
    return item


class PublishedDataLoader:
    """A ``DataLoader`` over a :class:`PublishedIterableDataset` that moves whole blocks between processes.

    Workers yield blocks of ``batch_size × k`` rows (``k = max(1, transfer_rows // batch_size)``);
    the main process cuts them into the dataset's batches (views: no copy). A worker→main transfer
    costs about the same per batch whatever its size (shared-memory segment, file descriptor,
    pickled ids), so at ``batch_size=1024`` moving 1,024-row batches one by one cost as much as
    reading them (``bench/loader.py``). The batches are those the dataset yields by itself: the
    same rows once per epoch across ranks and workers, shuffled within the buffer, a worker's last
    batch smaller unless ``drop_last``.

    Parameters
    ----------
    dataset
        The dataset; its ``batch_size`` is the size of the batches this loader yields.
    num_workers, multiprocessing_context, persistent_workers
        As for ``torch.utils.data.DataLoader`` (``spawn``: see the module notes).
    transfer_rows
        Rows per worker→main transfer (default one 4,096-row chunk; memory in flight is
        ``2 × num_workers × transfer_rows × d`` values).
    **dataloader_kwargs
        Passed to ``DataLoader`` (``pin_memory``, ``timeout``, ``prefetch_factor`` ...).

    Examples
    --------
    >>> ds = PublishedIterableDataset("s3://bucket/aniso", "coco", batch_size=1024, shuffle=True)  # doctest: +SKIP
    >>> loader = PublishedDataLoader(ds, num_workers=2)                                              # doctest: +SKIP
    >>> for epoch in range(3):                                                                      # doctest: +SKIP
    ...     for ids, emb in loader: ...
    """

    def __init__(
        self,
        dataset: PublishedIterableDataset,
        *,
        num_workers: int = 2,
        transfer_rows: int = 4096,
        multiprocessing_context: str | None = "spawn",
        persistent_workers: bool = True,
        **dataloader_kwargs: Any,
    ) -> None:
        self.dataset = dataset
        self.batch_size = dataset.batch_size
        prefetch = dataloader_kwargs.get("prefetch_factor") or 2
        workers = max(num_workers, 1)
        self._acks = torch.zeros(workers, dtype=torch.int64).share_memory_()
        # prefetch + 3 slots: a worker holds at most `prefetch` undelivered blocks, so the slot it
        # reuses has normally been copied out already
        self._cached = torch.full((workers, prefetch + 3), -1, dtype=torch.int64).share_memory_()
        self._slots: dict[tuple[int, int], tuple[int, torch.Tensor]] = {}
        self._blocks = copy.copy(dataset)
        self._blocks.batch_size = dataset.batch_size * max(1, transfer_rows // dataset.batch_size)
        self._blocks.drop_last = False  # a short final block still holds full batches; cut here
        self._blocks._ring_state = (self._acks, self._cached)
        # the default collate_fn walks the id list string by string (~40% of a worker's time)
        dataloader_kwargs.setdefault("collate_fn", _as_is)
        self.loader = torch.utils.data.DataLoader(
            self._blocks, batch_size=None, num_workers=num_workers,
            multiprocessing_context=multiprocessing_context if num_workers else None,
            persistent_workers=persistent_workers and num_workers > 0, **dataloader_kwargs)

    def _copy_out(self, block: torch.Tensor | None, worker: int, slot: int, gen: int, seq: int,
                  rows: int) -> torch.Tensor:
        """Copy a ring block's rows out (the batches the training loop holds are its own), then
        acknowledge it so the worker may reuse the slot (see :class:`_BlockRing`)."""
        if block is not None:
            self._slots[worker, slot] = (gen, block)
            self._cached[worker, slot] = gen
        held_gen, held = self._slots[worker, slot]
        if held_gen != gen:
            raise RuntimeError(f"loader worker {worker} slot {slot}: block generation {gen} never arrived")
        emb = held[:rows].clone()
        if int(self._acks[worker]) <= seq:
            self._acks[worker] = seq + 1
        return emb

    def set_epoch(self, epoch: int) -> None:
        """As :meth:`PublishedIterableDataset.set_epoch` (before the first pass, with persistent
        workers; each later pass reshuffles by itself)."""
        self.dataset.set_epoch(epoch)
        self._blocks.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[list[str], torch.Tensor]]:
        size, drop_last = self.batch_size, self.dataset.drop_last
        for item in self.loader:
            ids, emb = (item[0], item[1]) if len(item) == 2 else (item[0], self._copy_out(*item[1:]))
            for start in range(0, len(ids), size):
                if drop_last and start + size > len(ids):
                    break
                yield ids[start : start + size], emb[start : start + size]
