"""The matched refinement of AnisoAlign (aniso/methods/anisoalign/matching.py)."""

from __future__ import annotations

import numpy as np
import pytest

from aniso.errors import ConfigError, InputError
from aniso.methods import Aligner, AnisoAlign
from aniso.methods.anisoalign.closed_form import fit_closed_form
from aniso.methods.anisoalign.matching import assign_images, fit_matched_map
from aniso.numeric.moments import moments_of
from aniso.numeric.arrays import l2_normalize
from aniso.quality.diagnostics import knn_overlap


def _rotated_clusters(n: int, d: int = 16, clusters: int = 12, angle: float = 0.6, seed: int = 0):
    """Paired rows whose text is the image content turned by ``angle`` (radians) in three planes and
    shifted: the two covariances are equal up to that rotation, so no moment match can undo it."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)) * 1.5
    content = centres[rng.integers(clusters, size=n)] + 0.25 * rng.normal(size=(n, d))
    turn = np.eye(d)
    for k in range(3):
        a, b = 2 * k, 2 * k + 1
        turn[[a, a, b, b], [a, b, a, b]] = np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)
    offset = np.zeros(d)
    offset[-1] = 6.0
    image = l2_normalize(content + offset)
    text = l2_normalize(content @ turn.T + offset + 3.0 * np.eye(d)[-2])
    return text, image


def _paired_recall(substitutes: np.ndarray, image: np.ndarray) -> float:
    """Share of substitutes whose most similar image (of the held-out ones) is their own."""
    return float(np.mean(np.argmax(substitutes @ image.T, axis=1) == np.arange(len(image))))


def test_assign_images_recovers_a_permutation():
    rng = np.random.default_rng(1)
    images = l2_normalize(rng.normal(size=(300, 24)))
    order = rng.permutation(300)
    premapped = l2_normalize(images[order] + 0.01 * rng.normal(size=(300, 24)))
    np.testing.assert_array_equal(assign_images(premapped, images), order)


def test_the_matched_map_turns_what_the_closed_form_cannot():
    """A rotation between the modalities (equal covariances): the closed form leaves it, the matched
    refinement (fitted unpaired) brings each substitute close to its own image."""
    text, image = _rotated_clusters(6000)
    fit_t, fit_i = text[:4000], image[np.random.default_rng(2).permutation(4000)]  # unpaired
    closed = AnisoAlign(r=8, match_rows=0).fit(fit_t, fit_i)
    matched = AnisoAlign(r=8, match_rows=2000).fit(fit_t, fit_i)
    held_t, held_i = text[4000:], image[4000:]
    before, after = _paired_recall(closed.transform(held_t), held_i), _paired_recall(matched.transform(held_t), held_i)
    assert matched.closed_form.matched == 2000 and closed.closed_form.matched == 0
    assert before < 0.5 and after > 0.9, (before, after)
    assert not np.allclose(matched.closed_form.A, matched.closed_form.A.T)  # it turns, not only rescales


def test_without_evidence_in_the_matching_it_is_the_closed_form():
    """Shrunk towards the closed form with overwhelming weight, B = A, and A already maps the text
    covariance onto the image's, so the second fit is the identity: the closed form comes back."""
    text, image = _rotated_clusters(1000, seed=3)
    ts, ims = moments_of(text), moments_of(image)
    closed = fit_closed_form(ts, ims, shrinkage_rows=0.0, bounded=False)
    same = fit_matched_map(closed, ts, ims, text, image, rows=1000, seed=0, shrinkage_rows=0.0, prior_rows=1e9,
                           bounded=False)
    np.testing.assert_allclose(same.A, closed.A, atol=1e-6)
    # with the default weight the same matching does turn the map
    turned = fit_matched_map(closed, ts, ims, text, image, rows=1000, seed=0, shrinkage_rows=0.0, bounded=False)
    assert np.abs(turned.A - closed.A).max() > 0.05 and turned.matched == 1000


@pytest.mark.parametrize("n", [5, 37, 250])
def test_small_inputs_fit_deterministically(n):
    """Fewer rows than match_rows (and than a chunk), not a multiple of anything: the refinement
    matches what there is, and two fits give the same bits."""
    text, image = _rotated_clusters(n, d=8, clusters=3, seed=n)
    first = AnisoAlign(r=4, p=2).fit(text, image)
    second = AnisoAlign(r=4, p=2).fit(text, image)
    assert first.closed_form.matched == n
    out = first.transform(text)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(out, second.transform(text))


def test_matched_model_round_trips_and_older_models_say_they_are_not_matched(tmp_path):
    text, image = _rotated_clusters(1200, seed=4)
    model = AnisoAlign(r=8, match_rows=500).fit(text, image)
    model.save(str(tmp_path / "matched"))
    loaded = Aligner.load(str(tmp_path / "matched"))
    assert loaded.get_params()["match_rows"] == 500 and loaded.closed_form.matched == 500
    np.testing.assert_array_equal(loaded.transform(text[:50]), model.transform(text[:50]))
    # a closed-form model (no cf_matched array, as every model before the refinement) loads as one
    closed = AnisoAlign(r=8, match_rows=0).fit(text, image)
    closed.save(str(tmp_path / "closed"))
    state = np.load(next((tmp_path / "closed").glob("state-*.npz")))
    assert "cf_matched" not in state.files
    import json

    meta = json.loads((tmp_path / "closed" / "aligner.json").read_text())
    meta["params"].pop("match_rows")  # what an earlier version wrote
    (tmp_path / "closed" / "aligner.json").write_text(json.dumps(meta))
    old = Aligner.load(str(tmp_path / "closed"))
    assert old.get_params()["match_rows"] == 0
    np.testing.assert_array_equal(old.transform(text[:50]), closed.transform(text[:50]))


def test_knn_budget_and_strength_0_turn_the_refinement_off_and_both_at_once_are_refused():
    assert AnisoAlign(knn_budget=0.01).get_params()["match_rows"] == 0
    assert AnisoAlign().get_params()["match_rows"] == 4000
    assert AnisoAlign(strength=0).get_params()["match_rows"] == 0
    with pytest.raises(ConfigError, match="knn_budget applies to the closed form alone.*match_rows to 0"):
        AnisoAlign(knn_budget=0.01, match_rows=100)
    with pytest.raises(ConfigError, match="strength applies to the closed form alone.*centroid shift.*match_rows to 0"):
        AnisoAlign(strength=0, match_rows=100)
    with pytest.raises(ConfigError, match="match_rows"):
        AnisoAlign(match_rows=-1)


def test_a_matched_map_cannot_be_rescaled_by_share():
    text, image = _rotated_clusters(800, seed=5)
    model = AnisoAlign(r=8, match_rows=300).fit(text, image)
    with pytest.raises(InputError, match="refit to change α"):
        model.closed_form.with_strength(0.5)


def test_blocks_are_matched_in_random_order_even_when_the_samples_are_sorted(monkeypatch):
    """More rows than one assignment holds are matched in blocks; a sample in corpus order may be
    sorted by content, and blocks cut in that order would pair one cluster's text with another's
    images. The rows are shuffled first, so sorted samples refine the map as shuffled ones do."""
    from aniso.methods.anisoalign import matching

    monkeypatch.setattr(matching, "MATCH_BLOCK", 400)
    text, image = _rotated_clusters(3000, seed=6)
    order = np.lexsort(text.T[:2])  # text sorted by content, images in the reverse order
    fit_t, fit_i = text[:2000][order[order < 2000]], image[:2000][order[order < 2000]][::-1]
    model = AnisoAlign(r=8, match_rows=2000).fit(fit_t, fit_i)
    assert model.closed_form.matched == 2000
    assert _paired_recall(model.transform(text[2000:]), image[2000:]) > 0.9


def test_a_matching_without_correspondence_falls_back_to_the_closed_form(gap):
    """Text and images of unrelated content (the text's coordinates reversed): the matching turns the
    text at random and would scramble its neighbourhoods (below the production gate's 0.3); the kNN
    floor refuses it and the closed form is applied, bit for bit."""
    text = np.ascontiguousarray(gap.text[:, ::-1])
    unguarded = AnisoAlign(r=8, match_knn_floor=0.0).fit(text, gap.image)
    assert unguarded.closed_form.matched > 0
    assert knn_overlap(text[:1000], unguarded.transform(text[:1000])) < 0.3
    guarded = AnisoAlign(r=8).fit(text, gap.image)
    closed = AnisoAlign(r=8, match_rows=0).fit(text, gap.image)
    assert guarded.closed_form.matched == 0 and guarded.get_params()["match_rows"] == 4000
    np.testing.assert_array_equal(guarded.transform(text[:300]), closed.transform(text[:300]))


def test_the_floor_applies_a_share_of_the_refinement_before_dropping_it(gap):
    """On the planted gap the whole refinement keeps 0.60 of the text's neighbourhoods (on 1,000
    held rows), the closed form 0.77: a floor between them applies a halved share, one above the
    closed form's drops the refinement."""
    held = gap.text[:1000]
    kept = {}
    for floor in (0.5, 0.7, 0.9):
        model = AnisoAlign(r=8, match_knn_floor=floor).fit(gap.text, gap.image)
        kept[floor] = (model.closed_form.matched, model.closed_form.alpha, knn_overlap(held, model.transform(held)))
    assert kept[0.5][:2] == (2000, 1.0)
    assert kept[0.7][0] == 2000 and kept[0.7][1] in (0.5, 0.25, 0.125) and kept[0.7][2] > kept[0.5][2]
    assert kept[0.9][0] == 0 and kept[0.9][2] > kept[0.7][2]
