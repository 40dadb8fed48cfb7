"""Matched refinement: the rotation a moment match cannot see, from matched samples.

The closed form (:mod:`.closed_form`) is symmetric: it rescales the text along the directions where
the two covariances differ, but it cannot turn a direction of the text onto the image direction that
carries the same content. No map fitted from the two modalities' moments can: the moments fix a
map only up to a rotation that leaves the image covariance as it is, and which text direction
carries the content of which image direction is not in them. On the demo world that rotation is most of what is left:
the least-squares map fitted *with* the pairs closes 0.85 of the raw → paired gap of the position
task (logistic regression, L2 1e-4) where the closed form closes 0.53 (``docs/quality.md``).

Without pairs, the samples are matched instead. Each text row of a seeded sample is premapped by the
closed form and assigned a distinct image of a sample twice its size (:data:`IMAGE_POOL`) so that the
total cosine similarity is largest (the linear assignment problem, solved exactly, in blocks of
:data:`MATCH_BLOCK` text rows). The regression of the centred matched images on the centred text,
shrunk towards the closed form's matrix by ``d`` pseudo-pairs, gives ``B``; and the closed form is
fitted once more, from the covariance ``B`` gives the text to the image covariance, so the result
still matches the images' second moments under the same bounds:

    y = μ_i + A₂ Bᵀ (x − μ_t),   A₂ = closed form (Bᵀ Σ_t B → Σ_i)

With no information in the matching (``B`` = the closed form's ``A``, which already maps ``Σ_t`` onto
``Σ_i``), ``A₂ = I`` and this is the closed form. The map stays linear, so applying it costs what the
closed form costs; fitting it adds one 4,000 × 8,000 assignment (about 2.5 s on this machine).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import linear_sum_assignment

from aniso.methods.anisoalign.closed_form import ClosedForm, fit_closed_form, shrunk_covariance
from aniso.numeric.arrays import l2_normalize
from aniso.numeric.moments import Moments
from aniso.numeric.neighbours import knn_indices, neighbour_overlap

__all__ = ["IMAGE_POOL", "MATCH_BLOCK", "assign_images", "fit_matched_map"]

logger = logging.getLogger(__name__)

#: Most rows assigned in one linear assignment problem. Its cost grows with the cube of the rows
#: (2.8 s at 4,000, 19 s at 8,000 on this machine), so more rows are matched in disjoint blocks of
#: at most this many: the regression gets every pair at a cost linear in the rows.
MATCH_BLOCK = 4000
#: Image rows offered per matched text row. With more images than text rows, each text row is
#: assigned a distinct image from a richer pool, so its pair is closer (demo world, position task,
#: L2 1e-4: share of the gap closed 0.70 with 1, 0.73 with 2, 0.74 with 4); fit time is unchanged.
IMAGE_POOL = 2
#: Text rows the kNN floor is measured on (one rows × rows similarity product per measurement).
FLOOR_ROWS = 2000
#: Halvings of the refinement's share tried before the floor falls back to the closed form.
FLOOR_STEPS = 3


def assign_images(premapped: np.ndarray, images: np.ndarray) -> np.ndarray:
    """For each premapped text row ``(m, d)``, the index of its image ``(k, d)``, ``k ≥ m``, in the
    assignment of distinct images of largest total cosine similarity (rows L2-normalised)."""
    rows, cols = linear_sum_assignment(premapped @ images.T, maximize=True)
    out = np.empty(premapped.shape[0], dtype=np.int64)
    out[rows] = cols
    return out


def fit_matched_map(
    cf: ClosedForm,
    text_stats: Moments,
    image_stats: Moments,
    text_sample: np.ndarray,
    image_sample: np.ndarray,
    *,
    rows: int,
    seed: int,
    shrinkage_rows: float,
    knn_floor: float = 0.5,
    prior_rows: float = 1.0,
    **closed_form: float | bool,
) -> ClosedForm:
    """The closed form ``cf`` refined by matched samples (see the module docstring).

    Parameters
    ----------
    cf
        The closed form fitted from the moments (its ``A`` premaps the text for the matching and is
        what the regression is shrunk towards).
    text_sample, image_sample
        L2-normalised row samples of the two modalities (used unpaired).
    rows
        Text rows matched (fewer when a sample is smaller), each to one of ``IMAGE_POOL`` times as
        many image rows.
    shrinkage_rows
        Isotropic pseudo-rows per dimension the covariances are shrunk with (as in ``cf``).
    knn_floor
        Least kNN overlap@10 with the source text the refined substitutes must keep, measured on
        rows of the text sample: below it the refinement's share is halved (``alpha``), and after
        :data:`FLOOR_STEPS` halvings the closed form ``cf`` is returned unchanged. A matching that
        found no correspondence (text and images of unrelated content) turns the text at random;
        this keeps such a fit from scrambling the text's neighbourhoods.
    prior_rows
        Pseudo-pairs ``(x, A x)`` per dimension the regression is shrunk towards ``cf`` with.
    **closed_form
        The closed form's other settings (:func:`fit_closed_form`), for the second fit.

    Returns
    -------
    ClosedForm
        ``A = (1 − α) A_cf + α A₂ Bᵀ`` (not symmetric; ``α`` = 1 unless the floor lowered it), with
        the second fit's log-scales and evidence share; or ``cf`` itself (``matched`` 0).
    """
    d = text_stats.dim
    m = int(min(rows, text_sample.shape[0], image_sample.shape[0]))
    rng = np.random.default_rng(seed)
    # in random order: a sample in corpus order may be sorted by content, and the blocks must not be
    text_rows = text_sample[rng.permutation(text_sample.shape[0])[:m]]
    image_rows = image_sample[rng.permutation(image_sample.shape[0])[:min(m * IMAGE_POOL, image_sample.shape[0])]]
    mu_t, mu_i = text_stats.mean, image_stats.mean
    premapped = l2_normalize(cf.apply(text_rows, mu_t, mu_i))
    matched = np.empty_like(text_rows)
    blocks = -(-m // MATCH_BLOCK)
    for text_block, image_block in zip(np.array_split(np.arange(m), blocks),
                                       np.array_split(np.arange(image_rows.shape[0]), blocks)):
        matched[text_block] = image_rows[image_block][assign_images(premapped[text_block], image_rows[image_block])]
    x, y = text_rows - mu_t, matched - mu_i
    # shrunk towards the closed form by prior_rows·d pseudo-pairs (x, A x) with x drawn from the
    # (shrunk) text covariance: negligible when many more rows are matched than there are dimensions,
    # dominant when fewer; an isotropic ridge would instead flatten the low-variance directions,
    # where the demo world keeps the position of the objects
    prior = prior_rows * d * shrunk_covariance(text_stats.covariance(), text_stats.n, shrinkage_rows * d)
    b = np.linalg.solve(x.T @ x + prior, x.T @ y + prior @ cf.A.T)
    # the covariance B gives the rows it was fitted on (where B overfits the matching, these rows
    # spread more than new ones would, and the second fit draws those directions in), with the
    # text's row count as its evidence: it is the text's covariance as B maps it
    on_rows = Moments.from_chunk(x @ b, normalize=False)
    mapped = Moments(text_stats.n, on_rows.mean, on_rows.covariance() * text_stats.n)
    second = fit_closed_form(mapped, image_stats, shrinkage_rows=shrinkage_rows, **closed_form)
    refined = second.A @ b.T
    probe = text_sample[rng.permutation(text_sample.shape[0])[:FLOOR_ROWS]]
    own = knn_indices(probe, probe, 10, exclude_self=True)  # the text's neighbours, found once

    def kept_with(a_mat: np.ndarray) -> float:
        return neighbour_overlap(own, l2_normalize(mu_i + (probe - mu_t) @ a_mat.T)) if own.shape[1] else 1.0

    share, kept = 1.0, kept_with(refined)
    for _ in range(FLOOR_STEPS):
        if kept >= knn_floor:
            break
        share /= 2
        kept = kept_with((1 - share) * cf.A + share * refined)
    logger.info("matched refinement: %d pairs matched (mean cosine %.3f), ‖B − A‖/‖A‖=%.3f, ‖A₂ − I‖=%.3f; "
                "share %.3f applied, kNN overlap with the text %.3f (floor %.2f)",
                m, float(np.mean(np.sum(premapped * matched, axis=1))),
                float(np.linalg.norm(b.T - cf.A) / np.linalg.norm(cf.A)), float(np.linalg.norm(second.A - np.eye(d))),
                share, kept, knn_floor)
    if kept < knn_floor:
        logger.warning("matched refinement: even %.3f of it keeps only %.3f of the text's neighbourhoods (floor "
                       "%.2f): the matching found no correspondence; the closed form is used", share, kept, knn_floor)
        return cf
    return ClosedForm(A=(1 - share) * cf.A + share * refined, g=second.g, h=second.h, gain=second.gain,
                      alpha=share, matched=m)

