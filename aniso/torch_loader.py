"""A torch ``IterableDataset`` over a published dataset (imports torch; see :mod:`aniso.loader`).

Each DataLoader worker process opens the store itself, once, on its first iteration: an opened
store (its fsspec filesystem, event loop and connection pool) is never shared across processes,
which is what broke ``DataLoader(num_workers=2)`` over S3 ("attached to a different loop").
Use ``multiprocessing_context="spawn"`` (or ``"forkserver"``) when the training process runs
threads (an S3 client, Dask, Prefect): a forked worker inherits their locks mid-use.

Example
-------
>>> ds = PublishedIterableDataset("s3://bucket/aniso", "coco", batch_size=1024, shuffle=True)  # doctest: +SKIP
>>> loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2,                  # doctest: +SKIP
...                                      multiprocessing_context="spawn", persistent_workers=True)
>>> for epoch in range(3):                                                                      # doctest: +SKIP
...     ds.set_epoch(epoch)
...     for ids, emb in loader: ...
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .loader import iter_batches

__all__ = ["PublishedIterableDataset"]


class _SharedBatches:
    """Allocates each shuffled batch in shared memory: sending it to the main process copies nothing."""

    def __init__(self) -> None:
        self.last: torch.Tensor | None = None

    def __call__(self, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        self.last = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype).share_memory_()
        return self.last.numpy()

    def tensor(self, emb: np.ndarray) -> torch.Tensor:
        last = self.last
        if last is not None and last.data_ptr() == emb.ctypes.data and tuple(last.shape) == emb.shape:
            return last
        return torch.from_numpy(emb)


class PublishedIterableDataset(IterableDataset):
    """``(ids, embeddings)`` batches of a published dataset; use with ``DataLoader(batch_size=None)``.

    Parameters
    ----------
    root, dataset, version, storage_options
        As for :func:`aniso.open_published`.
    batch_size, shuffle, seed, buffer_chunks, only_valid, drop_last
        As for :func:`aniso.loader.iter_batches`.
    rank, world_size
        The distributed rank of this process; DataLoader workers split the rank's share further,
        so every row is yielded exactly once per epoch over all ranks and workers.
    """

    def __init__(
        self,
        root: str,
        dataset: str,
        *,
        batch_size: int,
        version: str | None = None,
        storage_options: dict[str, Any] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        buffer_chunks: int = 4,
        only_valid: bool = True,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        self.root, self.dataset, self.version = root, dataset, version
        self.storage_options = dict(storage_options or {})
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.buffer_chunks, self.only_valid, self.drop_last = buffer_chunks, only_valid, drop_last
        self.epoch = 0
        self._passes = 0  # iterations since set_epoch in this process (persistent workers)
        self._opened: tuple[int, Any] | None = None
        if version is None:  # pin the version now, so every worker reads the same one
            from .layout import DatasetLayout
            from .publish import read_latest

            pointer = read_latest(DatasetLayout(root, dataset), self.storage_options)
            self.version = pointer["version"] if pointer else None

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (call before iterating, like ``DistributedSampler.set_epoch``).

        Persistent workers never see a later ``set_epoch`` (they hold their own copy), so each
        new pass over the dataset in a process also advances the epoch by one by itself.
        """
        self.epoch = epoch
        self._passes = 0

    def _group(self) -> Any:
        if self._opened is None or self._opened[0] != os.getpid():
            from .publish import open_published

            options = dict(self.storage_options)
            if self.root.split("://", 1)[0] not in ("file", self.root):  # remote: a fresh filesystem
                options.setdefault("skip_instance_cache", True)
            published = open_published(self.root, self.dataset, version=self.version, storage_options=options)
            self._opened = (os.getpid(), published.store.group)
        return self._opened[1]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_opened"] = None  # never ship an opened store to another process
        return state

    def __iter__(self) -> Iterator[tuple[list[str], torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shared = _SharedBatches() if info is not None else None
        epoch = self.epoch + self._passes
        self._passes += 1
        for ids, emb in iter_batches(
            self._group(), self.batch_size, shuffle=self.shuffle, seed=self.seed, epoch=epoch,
            rank=self.rank * workers + worker, world_size=self.world_size * workers,
            buffer_chunks=self.buffer_chunks, only_valid=self.only_valid, drop_last=self.drop_last, out=shared,
        ):
            yield ids.tolist(), shared.tensor(emb) if shared is not None else torch.from_numpy(emb)
