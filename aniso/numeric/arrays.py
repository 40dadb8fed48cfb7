"""Array helpers shared by every stage: normalisation, validation and chunk sources.

A *chunk source* is anything that yields 2-D row blocks: an ``(n, d)`` array, a list of arrays,
or any object whose ``__iter__`` yields arrays afresh on every call (for example an
:class:`aniso.io.store.EmbeddingReader`). Fitting makes several passes, so a one-shot generator is
rejected with a clear error instead of silently yielding nothing on the second pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, Union, runtime_checkable

import numpy as np

from aniso.errors import InputError

__all__ = [
    "ChunkSource",
    "ArrayLike2D",
    "l2_normalize",
    "row_norms",
    "check_finite",
    "iter_chunks",
    "as_reiterable",
]

#: Rows per block when an in-memory array is streamed.
DEFAULT_CHUNK_ROWS = 65536


@runtime_checkable
class ChunkSource(Protocol):
    """Re-iterable source of ``(rows, d)`` blocks."""

    def __iter__(self) -> Iterator[np.ndarray]: ...


ArrayLike2D = Union[np.ndarray, ChunkSource, Iterable[np.ndarray]]


def row_norms(x: np.ndarray) -> np.ndarray:
    """L2 norm of every row (``einsum``: several times faster than ``np.linalg.norm(axis=1)``)."""
    return np.sqrt(np.einsum("ij,ij->i", x, x))


def l2_normalize(x: np.ndarray, dtype: np.dtype | type = np.float64, eps: float = 1e-10) -> np.ndarray:
    """Return the rows of ``x`` scaled to unit L2 norm.

    Computation happens in float64 unless ``dtype`` is float32; either is wide enough that fp16
    inputs with large raw norms cannot overflow when squared. Rows whose norm is below ``eps``
    are left as they are (all-zero rows stay zero).

    Parameters
    ----------
    x
        ``(n, d)`` or ``(d,)`` array of any float dtype.
    dtype
        Output dtype.
    eps
        Norm below which a row is not rescaled.
    """
    compute = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    work = np.array(x, dtype=compute, copy=True)  # one copy, then scaled in place
    squeeze = work.ndim == 1
    if squeeze:
        work = work[None, :]
    norm = row_norms(work)
    norm[norm < eps] = 1.0
    work /= norm[:, None]
    out = work.astype(dtype, copy=False)
    return out[0] if squeeze else out


def check_finite(x: np.ndarray, *, what: str, row_offset: int = 0) -> None:
    """Raise :class:`InputError` naming the first row of ``x`` holding NaN or Inf."""
    finite = np.isfinite(x)
    if finite.all():
        return
    bad_rows = np.flatnonzero(~finite.all(axis=1))
    first = int(bad_rows[0]) + row_offset
    raise InputError(
        f"{what}: {bad_rows.size} row(s) contain NaN or Inf; first bad row is {first}"
    )


def as_reiterable(source: ArrayLike2D, *, what: str = "input") -> ChunkSource | list[np.ndarray]:
    """Return ``source`` in a form that can be iterated more than once.

    Arrays become a one-element list; lists and tuples are kept; iterators and generators
    (which would be exhausted after one pass) raise :class:`InputError`.
    """
    if isinstance(source, np.ndarray):
        return [source]
    if isinstance(source, (list, tuple)):
        return list(source)
    if isinstance(source, Iterator):
        raise InputError(
            f"{what}: a one-shot iterator/generator cannot be used because fitting makes several "
            "passes; pass an array, a list of arrays or a re-iterable source (e.g. an EmbeddingReader)"
        )
    if isinstance(source, Iterable):
        return source  # type: ignore[return-value]
    raise InputError(f"{what}: expected an array or an iterable of arrays, got {type(source).__name__}")


def iter_chunks(
    source: ArrayLike2D, *, what: str = "input", chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[np.ndarray]:
    """Yield 2-D blocks of at most ``chunk_rows`` rows from ``source``, validating each.

    Raises
    ------
    InputError
        On a block that is not 2-D, whose width differs from the first block's, or that holds
        NaN/Inf (the message names the global row).
    """
    width: int | None = None
    offset = 0
    for block in as_reiterable(source, what=what):
        block = np.asarray(block)
        if block.ndim != 2:
            raise InputError(f"{what}: expected 2-D (rows, dim) blocks, got shape {block.shape}")
        if width is None:
            width = block.shape[1]
        elif block.shape[1] != width:
            raise InputError(
                f"{what}: block at row {offset} has dimension {block.shape[1]}, expected {width}"
            )
        for start in range(0, block.shape[0], chunk_rows):
            part = block[start : start + chunk_rows]
            check_finite(part, what=what, row_offset=offset + start)
            yield part
        offset += block.shape[0]
