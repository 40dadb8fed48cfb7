from __future__ import annotations

import copy
import hashlib
import io
import json
import math

import numpy as np
import pytest

from aniso.errors import ConfigError, StoreCorrupt
from aniso.methods import Aligner, AnisoAlign, CentroidShift, ReAlign
from aniso.methods.params import REMOVED_LEARNED_PARAMS, AnisoAlignParams
from aniso.quality.diagnostics import centroid_residual, domain_classifier_accuracy, knn_overlap

#: The parameters an AnisoAlign saved before the learned stages were removed stores in its
#: aligner.json (get_params() of that version, with r=8): every learned-stage field, learned false.
OLD_PARAMS = {
    "calibrate": True, "r": 8, "p": 64, "mixing": "haar", "seed": 0, "strength": 1.0, "evidence": 1.0,
    "bound": 0.3, "shrinkage_rows": 7.0, "adaptive": True, "bounded": True, "knn_budget": None,
    "budget_rows": 2000, "radial": True, "learned": False, "use_prior": True, "min_samples_learned": 5000,
    "full_capacity_samples": 20000, "hidden": 512, "prior_hidden": 256, "prior_steps": 1000,
    "refine_steps": 1000, "batch_size": 1024, "delta_theta": math.pi / 8, "delta_ell": 0.25, "delta_v": 0.5,
    "w_prior": 1.0, "w_dist": 1.0, "w_rel": 1.0, "w_inst": 0.5, "w_reg": 0.001, "device": None,
    "torch_threads": 1, "calibration_rounds": 50,
}


def test_closed_form_reduces_to_centroid_shift_and_calibrates(gap):
    t, i = gap.text, gap.image
    zero = AnisoAlign(strength=0.0, radial=False, r=8).fit(t, i)
    np.testing.assert_allclose(zero.premap(t), CentroidShift().fit(t, i).premap(t), atol=1e-12)
    model = AnisoAlign(r=8, match_rows=0).fit(t, i)
    assert centroid_residual(model.transform(t), i) < 1e-4
    # the strong, well-sampled planted residual is corrected (evidence-adaptive bound)
    assert model.closed_form.gain > 0.9 and np.sum(np.abs(model.closed_form.h) > 0.1) >= 3
    held = slice(1500, None)
    acc_realign = domain_classifier_accuracy(ReAlign().fit(t[:1500], i[:1500]).transform(t[held]), i[held])
    # without the kNN budget the planted residual is matched (by amplifying the text's noise) ...
    full = AnisoAlign(r=8, knn_budget=None, match_rows=0).fit(t[:1500], i[:1500])
    assert domain_classifier_accuracy(full.transform(t[held]), i[held]) < acc_realign - 0.05
    # ... which a kNN budget refuses: the neighbourhoods stay those of the shift
    m2 = AnisoAlign(r=8, knn_budget=0.01).fit(t[:1500], i[:1500])
    assert m2.closed_form.alpha < 1.0
    shift_knn = knn_overlap(t[held], CentroidShift().fit(t[:1500], i[:1500]).transform(t[held]))
    assert knn_overlap(t[held], m2.transform(t[held])) >= shift_knn - 0.02
    assert knn_overlap(t[held], full.transform(t[held])) < shift_knn - 0.03
    assert domain_classifier_accuracy(m2.transform(t[held]), i[held]) < acc_realign + 0.02


def test_premap_is_the_closed_form_map(gap):
    """x̂ = normalize(μ_i + A(x − μ_t)): the map the closed form states, nothing on top."""
    t, i = gap.text[:1500], gap.image[:1500]
    m = AnisoAlign(r=8).fit(t, i)
    x = gap.text[1500:].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = m.mu_image + (x - m.mu_text) @ m.closed_form.A.T
    np.testing.assert_allclose(m.premap(x), y / np.linalg.norm(y, axis=1, keepdims=True), rtol=0, atol=1e-12)


@pytest.mark.parametrize("d", [512, 768, 1280])
def test_dimensions(d):
    rng = np.random.default_rng(d)
    base = rng.normal(size=(400, d))
    text = base + 2.0 * rng.normal(size=d)
    image = base * np.linspace(0.5, 1.5, d) + 2.0 * rng.normal(size=d)
    m = AnisoAlign(r=16, p=8).fit(text, image)
    out = m.transform(text[:50])
    assert out.shape == (50, d) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert m.frame.U.shape == (d, 16) and m.frame.P.shape == (d, 8)


def test_ablation_flags_and_validation(gap):
    t, i = gap.text[:600], gap.image[:600]
    base = AnisoAlign(r=8).fit(t, i).transform(t)
    for flags in ({"bounded": False}, {"mixing": "identity"}, {"adaptive": False}):
        out = AnisoAlign(**{"r": 8, **flags}).fit(t, i).transform(t)
        assert out.shape == base.shape and np.isfinite(out).all()
    # the frame's mixing matrix is stored with the model but does not enter the map
    assert np.array_equal(AnisoAlign(r=8, mixing="identity").fit(t, i).transform(t), base)
    nocal = AnisoAlign(r=8, calibrate=False).fit(t, i)
    assert nocal.mu_hat is None and centroid_residual(nocal.transform(t), i) > 1e-4
    with pytest.raises(ConfigError):
        AnisoAlign(r=7)
    with pytest.raises(ConfigError):
        AnisoAlign(unknown=1)


# -- the removed learned stages: old parameter sets and old models -----------------------------
def test_old_parameters_with_learned_false_are_dropped():
    assert set(OLD_PARAMS) - {"calibrate"} - set(AnisoAlignParams.model_fields) == REMOVED_LEARNED_PARAMS
    old = AnisoAlign(**OLD_PARAMS)
    new = AnisoAlign(**{k: v for k, v in OLD_PARAMS.items() if k not in REMOVED_LEARNED_PARAMS})
    assert old.get_params() == new.get_params()
    assert not REMOVED_LEARNED_PARAMS & set(old.get_params())
    # inert values of any kind are dropped; the switch before ``learned`` too
    assert AnisoAlign(r=8, hidden=3, refine_steps=0, device="cuda", torch_threads=None).get_params() \
        == AnisoAlign(r=8).get_params()
    assert AnisoAlign(r=8, closed_form_only=True).get_params() == AnisoAlign(r=8).get_params()
    assert AnisoAlign(r=8, closed_form_only=False, learned=False).get_params() == AnisoAlign(r=8).get_params()
    assert AnisoAlign(r=8, prior_strength=3.0).params.shrinkage_rows == 3.0


@pytest.mark.parametrize("params", [
    {"learned": True},
    {"learned": "true"},
    {"learned": True, "hidden": 32, "refine_steps": 10},
    {"closed_form_only": False},  # before ``learned`` existed this ran the learned stages
    {"learned": "maybe"},  # not a boolean: never dropped silently
])
def test_learned_true_is_refused_with_the_reason(params):
    with pytest.raises(ConfigError, match=r"learned stages .* were removed: measured, they transferred worse "
                                          r"downstream than the closed form .*docs/quality\.md.*refit with learned: false"):
        AnisoAlign(r=8, **params)


def test_settings_with_learned_true_are_refused():
    from aniso.config import Settings, load_settings

    with pytest.raises(ConfigError, match=r"method\.params: AnisoAlign's learned stages .* were removed"):
        load_settings(overrides=["method.params.learned=true"])
    # inert learned-stage settings of earlier versions still load, with the run key they had
    old = Settings(method={"name": "anisoalign", "params": {"learned": False, "torch_threads": 2}})
    assert old.method.params == {"learned": False, "torch_threads": 2}


def _rewrite(where, meta_update=None, state_update=None):
    """Change a saved model's aligner.json and state as an earlier version would have written them."""
    meta = json.loads((where / "aligner.json").read_text())
    if state_update is not None:
        with np.load(where / meta["state"]) as npz:
            state = {k: npz[k] for k in npz.files}
        state.update(state_update)
        buffer = io.BytesIO()
        np.savez(buffer, **state)
        payload = buffer.getvalue()
        meta["state_sha256"] = hashlib.sha256(payload).hexdigest()
        meta["state"] = f"state-{meta['state_sha256'][:16]}.npz"
        meta["arrays"] = sorted(state)
        (where / meta["state"]).write_bytes(payload)
    meta.update(meta_update or {})
    (where / "aligner.json").write_text(json.dumps(meta))


def test_old_closed_form_model_loads_bit_identical(gap, tmp_path):
    """A model saved before the removal (every learned-stage parameter in its aligner.json,
    learned false) loads and gives the bits of a fresh closed-form model, in every apply path."""
    t, i = gap.text[:1500], gap.image[:1500]
    fresh = AnisoAlign(r=8, match_rows=0).fit(t, i)
    where = tmp_path / "old"
    fresh.save(str(where))
    meta = json.loads((where / "aligner.json").read_text())
    # what the earlier version stored: the closed form's state under the same array names
    assert {"capacity", "ref_l_mean", "ref_l_std", "ref_sig_v", "ref_bounds", "frame_U", "cf_A"} <= set(meta["arrays"])
    _rewrite(where, {"params": OLD_PARAMS, "aniso_version": "0.9.0"})
    old = Aligner.load(str(where))
    assert isinstance(old, AnisoAlign) and old.get_params() == fresh.get_params()
    x = gap.text[1500:]
    for src in (x, x.astype(np.float64), x.astype(np.float16)):
        assert np.array_equal(old.transform(src), fresh.transform(src))
    assert np.array_equal(old.premap(x), fresh.premap(x))
    # the state a refit writes is the one the earlier version wrote (same content address)
    again = copy.deepcopy(old)
    assert again.save(str(tmp_path / "again")) and \
        json.loads((tmp_path / "again" / "aligner.json").read_text())["state"] == meta["state"]


@pytest.mark.parametrize("what", ["params", "mlp", "prior", "capacity"])
def test_old_learned_model_is_refused_on_load(gap, tmp_path, what):
    """A model of the learned stages is never applied as the closed form: its load fails, naming it."""
    fresh = AnisoAlign(r=8).fit(gap.text[:600], gap.image[:600])
    where = tmp_path / "learned"
    fresh.save(str(where))
    if what == "params":
        _rewrite(where, {"params": {**OLD_PARAMS, "learned": True}})
        error, message = ConfigError, r"learned stages .* were removed.*refit with learned: false"
    else:
        state = {"mlp": {"ref_mlp_w1": np.ones((4, 4), np.float32), "ref_mlp_b1": np.zeros(4, np.float32)},
                 "prior": {"prior_anchor_cos": np.zeros((4, 2))},
                 "capacity": {"capacity": np.asarray("full")}}[what]
        _rewrite(where, {"params": OLD_PARAMS}, state)
        error, message = StoreCorrupt, r"holds AnisoAlign's learned stages .*were removed.*refit with learned: false"
    with pytest.raises(error, match=message) as info:
        Aligner.load(str(where))
    assert str(where) in str(info.value)


class _CountedPasses:
    """A re-iterable chunk source that counts the passes made over it."""

    def __init__(self, rows: np.ndarray, chunk: int = 128) -> None:
        self.rows, self.chunk, self.passes = rows, chunk, 0

    def __iter__(self):
        self.passes += 1
        for start in range(0, len(self.rows), self.chunk):
            yield self.rows[start : start + self.chunk]


@pytest.mark.parametrize("match", [0, 4000])
def test_the_fit_samples_images_only_for_the_matched_refinement(gap, tmp_path, monkeypatch, match):
    """No step of the closed form reads image rows beyond their moments: without the matched
    refinement the fit makes one pass over the images (the statistics) and the fit stage draws no
    image sample; with it, one image sample. The stage's model is the one its moments and samples
    give, bit for bit."""
    from aniso.io.store import EmbeddingStore
    from aniso.numeric.moments import moments_of
    from aniso.stages import fit as fit_stage
    from aniso.numeric.sampling import sample_indices
    from aniso.stages.statistics import _save_moments as save_moments

    text, image = _CountedPasses(gap.text), _CountedPasses(gap.image)
    AnisoAlign(match_rows=match).fit(text, image)
    # images: moments (and the sample to match); text: moments, sample, calibration
    assert image.passes == (2 if match else 1) and text.passes == 3

    urls = {}
    for name, rows in (("text", gap.text), ("image", gap.image)):
        store = EmbeddingStore.create(str(tmp_path / f"{name}.zarr"), n_rows=len(rows), dim=rows.shape[1],
                                      chunk_rows=256, shard_rows=1024)
        for shard in range(store.n_shards):
            lo, hi = store.shard_range(shard)
            store.write_shard(shard, rows[lo:hi], [f"{name}-{i}" for i in range(lo, hi)])
        urls[name] = store.url
        urls[f"{name}_stats"] = str(tmp_path / f"{name}-moments.npz")
        save_moments(urls[f"{name}_stats"], moments_of(rows), {})
    sampled = []
    real_sample_rows = fit_stage.sample_rows
    monkeypatch.setattr(fit_stage, "sample_rows",
                        lambda store, rows: sampled.append(store.url) or real_sample_rows(store, rows))
    model = fit_stage.fit_model(str(tmp_path / "model"), "anisoalign", {"match_rows": match}, urls["text_stats"],
                                urls["image_stats"], urls["text"], urls["image"], seed=0, sample_size=None,
                                storage_options={})
    assert sampled == ([urls["text"], urls["image"]] if match else [urls["text"]])
    staged = Aligner.load(model)
    image_sample = gap.image[sample_indices(len(gap.image), 20000, 1)] if match else None
    uncalibrated = AnisoAlign(match_rows=match).fit_statistics(
        moments_of(gap.text), moments_of(gap.image), text_sample=gap.text[sample_indices(len(gap.text), 20000, 0)],
        image_sample=image_sample)
    assert np.array_equal(staged.premap(gap.text[:50]), uncalibrated.premap(gap.text[:50]))
