"""The aligner interface every method implements (scikit-learn style).

An aligner maps L2-normalised text embeddings to substitute image embeddings::

    aligner = get_aligner("realign").fit(text, image)   # arrays or re-iterable chunk sources
    subs = aligner.transform(text_chunk)                # (n, d) float32, unit norm
    aligner.save("s3://bucket/models/x", storage_options=...)
    same = Aligner.load("s3://bucket/models/x", storage_options=...)

Fitting is split in three steps so that an orchestrator can distribute the passes over data:

1. statistics: :class:`~aniso.numeric.moments.Moments` of each modality (mergeable, per shard);
2. :meth:`Aligner.fit_statistics`: the model proper, from the moments plus, for methods with
   ``sample_size > 0``, row samples of the modalities in ``sampled``, drawn with
   :func:`aniso.numeric.sampling.sample_indices`;
3. calibration: :meth:`Aligner.premap_sum` per chunk, summed, then
   :meth:`Aligner.set_calibration` (the centroid calibration of docs/method.md §6).

:meth:`Aligner.fit` runs the three steps in one process.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Self

import numpy as np

from aniso.errors import InputError, NotFittedError
from aniso.methods.params import MethodParams, NoParams, validate_method
from aniso.methods.table import METHODS, method_entry
from aniso.numeric.arrays import ArrayLike2D, check_finite, iter_chunks, l2_normalize
from aniso.numeric.fused_affine import APPLY_KERNEL, NormalizedAffine
from aniso.numeric.moments import Moments, moments_of
from aniso.numeric.rowwise import BLOCK, centred_affine_rows
from aniso.numeric.sampling import collect_rows, sample_indices

__all__ = ["Aligner", "get_aligner", "aligner_class", "available_aligners"]

logger = logging.getLogger(__name__)

def aligner_class(name: str) -> type[Aligner] | None:
    """The class of method ``name`` (:data:`~aniso.methods.table.METHODS`; None: unknown)."""
    entry = METHODS.get(name)
    return entry.load() if entry is not None else None


class Aligner(ABC):
    """Base class of every alignment method.

    Subclasses set ``name`` (the CLI name), implement :meth:`_fit` and :meth:`_premap`, and
    list their hyper-parameters in :meth:`get_params` (JSON-able) and their fitted arrays in
    :meth:`_get_state` / :meth:`_set_state`.

    Parameters
    ----------
    calibrate
        Apply the final centroid calibration ``x* = normalize(x̂ − μ̂ + μ_image)``.
    """

    name: ClassVar[str] = ""
    #: The method's hyper-parameter model (everything but ``calibrate``), validated when the
    #: settings load; see :mod:`aniso.methods.params`.
    Params: ClassVar[type[MethodParams]] = NoParams
    #: Rows of each modality the fit wants beyond the moments (0: moments suffice).
    sample_size: ClassVar[int] = 0
    #: The modalities those rows are drawn from (a sample is a pass over its input's chunks:
    #: only the ones the fit reads are drawn).
    sampled: ClassVar[tuple[str, ...]] = ("text", "image")
    #: Statistics the fit needs: ``"full"`` (mean + d×d co-moment) or ``"trace"`` (mean + tr Σ).
    statistics: ClassVar[str] = "full"
    #: Default for ``calibrate`` (faithful to each baseline's definition).
    default_calibrate: ClassVar[bool] = True
    #: Fewest rows of each modality a fit accepts (a mean and a spread need at least two).
    min_rows: ClassVar[int] = 2

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A named method takes its parameter model and statistics from its row of the method
        # table, so the table is the one place they are stated.
        super().__init_subclass__(**kwargs)
        if cls.name:
            entry = method_entry(cls.name)
            cls.Params = entry.params_model()
            cls.statistics = entry.statistics

    def __new__(cls, *args: Any, **params: Any) -> Self:
        # Every method's keyword parameters are checked against its parameter model before its
        # own __init__ runs: a misspelt or out-of-range one is a ConfigError naming it, for every
        # method alike (never a bare TypeError, never an error type of its own).
        if cls.name:
            validate_method(cls.name, params, where=f"{cls.__name__}: ")
        return super().__new__(cls)

    def __init__(self, calibrate: bool | None = None) -> None:
        self.calibrate = self.default_calibrate if calibrate is None else bool(calibrate)
        #: How :meth:`transform` computes a matrix map (one of
        #: :data:`aniso.numeric.fused_affine.APPLY_KERNELS`); saved with the model, so every later
        #: apply of it gives the same bits.
        self.apply_kernel = APPLY_KERNEL
        self.mu_text: np.ndarray | None = None
        self.mu_image: np.ndarray | None = None
        self.mu_hat: np.ndarray | None = None
        self.dim: int | None = None

    # -- hyper-parameters ------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """JSON-able constructor arguments (enough to rebuild an unfitted copy)."""
        return {"calibrate": self.calibrate}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- fitting ---------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.mu_image is not None and (not self.calibrate or self.mu_hat is not None)

    def fit(self, text: ArrayLike2D, image: ArrayLike2D, *, seed: int | None = None) -> Self:
        """Fit on text and image embeddings (arrays or re-iterable chunk sources).

        Makes one statistics pass over each input, draws row samples if the method needs them,
        and, when ``calibrate`` is on, one calibration pass over the text. ``seed`` draws those
        samples; by default the method's own ``seed`` parameter (0 for methods without one), so
        ``AnisoAlign(seed=s).fit(t, i)`` is seeded by ``s`` throughout.
        """
        if seed is None:
            seed = int(self.get_params().get("seed", 0))
        full = self.statistics == "full"
        text_stats = moments_of(text, what="text", full=full)
        image_stats = moments_of(image, what="image", full=full)
        text_sample = image_sample = None
        if self.sample_size > 0 and "text" in self.sampled:
            text_sample = collect_rows(text, sample_indices(text_stats.n, self.sample_size, seed))
        if self.sample_size > 0 and "image" in self.sampled:
            image_sample = collect_rows(image, sample_indices(image_stats.n, self.sample_size, seed + 1))
        self.fit_statistics(text_stats, image_stats, text_sample=text_sample, image_sample=image_sample)
        if self.calibrate:
            total = np.zeros(self.dim or 0)
            count = 0
            for chunk in iter_chunks(text, what="text"):
                part_sum, part_n = self.premap_sum(chunk)
                total += part_sum
                count += part_n
            self.set_calibration(total / count)
        return self

    def fit_statistics(
        self,
        text_stats: Moments,
        image_stats: Moments,
        *,
        text_sample: np.ndarray | None = None,
        image_sample: np.ndarray | None = None,
    ) -> Self:
        """Fit everything except the calibration from moments (and samples, if needed)."""
        if text_stats.n == 0 or image_stats.n == 0:
            raise InputError(
                f"cannot fit on empty input: {text_stats.n} text row(s), {image_stats.n} image row(s)"
            )
        if text_stats.dim != image_stats.dim:
            raise InputError(
                f"text and image embeddings differ in dimension: text d={text_stats.dim}, "
                f"image d={image_stats.dim}"
            )
        for what, st in (("text", text_stats), ("image", image_stats)):
            if st.n < self.min_rows:
                raise InputError(f"{self.name}: too few {what} rows to fit: {st.n} < {self.min_rows}")
            if not st.trace() > 1e-12:
                raise InputError(
                    f"{self.name}: the {what} embeddings have no variance (all {st.n} rows point the same "
                    "way after L2 normalisation); nothing can be aligned"
                )
        missing = [name for name, sample in (("text", text_sample), ("image", image_sample))
                   if self.sample_size > 0 and name in self.sampled and sample is None]
        if missing:
            raise InputError(f"{self.name}: fitting needs row samples of {' and '.join(missing)}")
        self.dim = text_stats.dim
        self.mu_text = np.array(text_stats.mean, dtype=np.float64)
        self.mu_image = np.array(image_stats.mean, dtype=np.float64)
        self.mu_hat = None
        self._fit(
            text_stats,
            image_stats,
            None if text_sample is None else l2_normalize(text_sample),
            None if image_sample is None else l2_normalize(image_sample),
        )
        logger.info("fitted %s on %d text and %d image rows (d=%d)", self.name, text_stats.n, image_stats.n, self.dim)
        return self

    @abstractmethod
    def _fit(
        self,
        text_stats: Moments,
        image_stats: Moments,
        text_sample: np.ndarray | None,
        image_sample: np.ndarray | None,
    ) -> None:
        """Method-specific fit; ``mu_text``, ``mu_image`` and ``dim`` are already set."""

    # -- applying --------------------------------------------------------------------------
    @abstractmethod
    def _premap(self, x: np.ndarray) -> np.ndarray:
        """Map L2-normalised float64 rows to x̂ (before calibration), float64 unit norm."""

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        x = self._check_shape(x)
        check_finite(x, what=f"{self.name} transform input")
        return l2_normalize(x)

    def premap(self, x: np.ndarray) -> np.ndarray:
        """x̂ for a chunk: the map before the centroid calibration (float64)."""
        return self._premap(self._check_input(x))

    def _affine(self) -> tuple[float | np.ndarray, np.ndarray] | None:
        """``(L, c)`` when the premap is ``normalize(L u + c)`` of the unit rows ``u`` (``L`` a
        scalar or a ``d × d`` matrix), else None.

        Such methods get the fused float32 kernel (:mod:`aniso.numeric.fused_affine`) for float16/float32
        input in :meth:`transform` and :meth:`premap_sum`.
        """
        return None

    def _centred_map(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(m, μ_t, μ_i)`` when the premap is ``normalize(μ_i + (u − μ_t) m)`` of the unit rows
        ``u`` computed as ``rowwise_matmul`` does (float64, row-deterministic), else None.

        Such methods get :func:`aniso.numeric.rowwise.centred_affine_rows` in :meth:`transform`:
        the same bits as the generic float64 path, with fewer and smaller temporaries.
        """
        return None

    def _fused(self, x: np.ndarray, *, calibrated: bool, rowwise: bool = True) -> NormalizedAffine | None:
        """The fused kernel for ``x``, or None where the float64 path applies.

        ``rowwise``: the result is the transform, which keeps each model's bits. With a matrix
        ``L`` that is the fused kernel only for a model whose :attr:`apply_kernel` is
        ``float32-tiles`` (sums, such as the calibration pass's, may always use it).
        """
        affine = self._affine()
        if affine is None or np.asarray(x).dtype not in (np.float16, np.float32):
            return None
        if rowwise and np.ndim(affine[0]) == 2 and self.apply_kernel != "float32-tiles":
            return None
        recentre = self.mu_hat - self.mu_image if calibrated and self.mu_hat is not None else None
        return NormalizedAffine(affine[0], affine[1], recentre)

    def _check_shape(self, x: np.ndarray) -> np.ndarray:
        if self.mu_image is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit() or load() first")
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InputError(f"expected text embeddings of shape (n, {self.dim}), got {x.shape}")
        return x

    def premap_sum(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """Sum of x̂ over a chunk and its row count: the calibration pass's partial result."""
        fused = self._fused(self._check_shape(x), calibrated=False, rowwise=False)
        if fused is not None:
            return fused.premap_sum(x, what=f"{self.name} calibration input")
        xh = self.premap(x)
        return xh.sum(axis=0), int(xh.shape[0])

    def set_calibration(self, mu_hat: np.ndarray) -> Self:
        """Store μ̂, the mean of x̂ over the whole source set."""
        mu_hat = np.asarray(mu_hat, dtype=np.float64)
        if mu_hat.shape != (self.dim,) or not np.isfinite(mu_hat).all():
            raise InputError(f"calibration mean must be a finite vector of shape ({self.dim},)")
        self.mu_hat = mu_hat
        return self

    def transform(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Substitute image embeddings for a chunk of text: ``(n, d)`` float32, unit norm.

        Parameters
        ----------
        x : (n, d) array
            Text embeddings (any float dtype; every entry finite).
        out : (n, d) float32 C-contiguous array, optional
            Where to write the result (not overlapping ``x``), e.g. a slice of a whole shard's
            buffer; a new array when None.

        Returns
        -------
        (n, d) float32 array: ``out`` when given.
        """
        x = self._check_shape(x)
        if out is not None and (out.shape != x.shape or out.dtype != np.float32 or not out.flags.c_contiguous):
            raise InputError(f"transform out= must be a C-contiguous float32 array of shape {x.shape}, "
                             f"got {out.dtype} {out.shape}")
        if self.calibrate and self.mu_hat is None:
            raise NotFittedError(f"{type(self).__name__}: calibration mean missing; finish fit()")
        fused = self._fused(x, calibrated=self.calibrate)
        if fused is not None:
            return fused.transform(x, what=f"{self.name} transform input", out=out)
        centred = self._centred_map()
        if centred is not None:
            check_finite(x, what=f"{self.name} transform input")
            return centred_affine_rows(x, *centred, (self.mu_hat, self.mu_image) if self.calibrate else None, out=out)
        check_finite(x, what=f"{self.name} transform input")
        if out is None:
            out = np.empty(x.shape, dtype=np.float32)
        for start in range(0, x.shape[0], BLOCK):  # row-wise maps: blocks only bound the temporaries
            xh = self._premap(l2_normalize(x[start : start + BLOCK]))
            if self.calibrate:
                xh = l2_normalize(xh - self.mu_hat + self.mu_image)
            out[start : start + xh.shape[0]] = xh
        return out

    # -- persistence -----------------------------------------------------------------------
    def _get_state(self) -> dict[str, np.ndarray]:
        """Method-specific fitted arrays (numpy only)."""
        return {}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        """Inverse of :meth:`_get_state`."""

    def get_state(self) -> dict[str, np.ndarray]:
        if self.mu_image is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; nothing to save")
        state = {"mu_text": self.mu_text, "mu_image": self.mu_image}
        if self.mu_hat is not None:
            state["mu_hat"] = self.mu_hat
        state.update(self._get_state())
        return state

    def save(self, url: str, storage_options: dict[str, Any] | None = None) -> str:
        """Write the model to ``url`` (a folder on any fsspec filesystem); bit-exact on reload.

        Atomic, and safe while other processes save or load the same folder: the arrays go to
        ``state-<sha256>.npz`` (named by their content, so two writers never write one file with
        different bytes), then one small JSON naming that file and its checksum is written whole
        (:func:`aniso._fs.write_atomic`: ``os.replace`` locally, one PUT on object storage) and
        commits the model. A reader sees the previous complete model or the new one, never a mix.
        A complete model (calibrated, or a method that does not calibrate) commits
        ``aligner.json``; one still waiting for its calibration commits ``uncalibrated.json``, so a
        slower run's fit can never replace another run's finished model.
        """
        from aniso.methods.persistence import save_model

        return save_model(self, url, storage_options)

    @classmethod
    def load(cls, url: str, storage_options: dict[str, Any] | None = None) -> Aligner:
        """Read a model written by :meth:`save`; the class is chosen by the stored name.

        The complete model (``aligner.json``) when there is one, else one awaiting its
        calibration (``uncalibrated.json``).

        Raises
        ------
        StoreNotFound
            No model was committed at ``url``.
        StoreCorrupt
            The committed model is unreadable (truncated, checksum mismatch, unknown method), or
            holds what this aniso cannot apply (an AnisoAlign with the removed learned stages).
        ConfigError
            Its parameters are ones this aniso refuses (AnisoAlign with ``learned: true``).
        """
        from aniso.methods.persistence import load_model

        return load_model(url, storage_options, None if cls is Aligner else cls)

    @classmethod
    def saved(cls, url: str, storage_options: dict[str, Any] | None = None) -> Aligner | None:
        """The most advanced readable model at ``url`` (complete first), or None.

        A damaged model (e.g. left by a crash of a version that wrote in place) counts as absent
        and is logged, so a rerun fits and saves it again instead of failing on it forever.
        """
        from aniso.methods.persistence import saved_model

        return saved_model(url, storage_options, None if cls is Aligner else cls)

def available_aligners() -> list[str]:
    """Names accepted by :func:`get_aligner` (and the CLI's ``--method``), in table order."""
    return list(METHODS)


def get_aligner(name: str, **params: Any) -> Aligner:
    """Construct the aligner registered under ``name`` with ``params``."""
    return method_entry(name).load()(**params)
