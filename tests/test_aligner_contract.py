"""One contract for every registered aligner (parametrised over the registry, not a hand list).

Every method: fit/transform shapes and dtype, unit norms, bitwise chunk invariance, save/load
round trip (local and S3), determinism under a seed, and clear errors on bad input. AnisoAlign is
checked twice: at its defaults and with the kNN budget (a fit that searches the correction's share).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from aniso._fs import filesystem
from aniso.errors import AnisoError, ConfigError, InputError, NotFittedError, StoreCorrupt
from aniso.methods import Aligner, AnisoAlign, available_aligners, get_aligner
from aniso.numeric.arrays import l2_normalize
from aniso.numeric.fused_affine import APPLY_KERNELS
from aniso.numeric.moments import moments_of
from aniso.numeric.rowwise import BLOCK, TILE
from aniso.testing.synthetic import planted_gap

CASES = [pytest.param(name, {}, id=name) for name in available_aligners()]
CASES.append(pytest.param("anisoalign", {"r": 8, "knn_budget": 0.01}, id="anisoalign-budget"))
CASES.append(pytest.param("anisoalign", {"r": 8, "match_rows": 0}, id="anisoalign-closed-form"))
CASES.append(pytest.param("c3", {"noise": 0.1, "seed": 5}, id="c3-noise"))

#: Ways to cut the apply rows into blocks: single rows, sizes around powers of two and BLAS tiles.
CUTS = [(1, 117), (2, 3, 5, 7, 15, 33), (64, 255), (128, 256), (100, 257, 300), (150,)]

N_FIT = 900
N_APPLY = 301  # not a multiple of anything


@pytest.fixture(scope="module")
def data(gap):
    return gap.text[:N_FIT], gap.image[N_FIT : 2 * N_FIT], gap.text[2 * N_FIT - 100 :][:N_APPLY]


@pytest.fixture(scope="module")
def fitted(data):
    text, image, _ = data
    cache: dict[str, Aligner] = {}

    def get(name: str, params: dict) -> Aligner:
        key = f"{name}{sorted(params.items())}"
        if key not in cache:
            cache[key] = get_aligner(name, **params).fit(text, image, seed=3)
        return cache[key]

    return get


def test_registry_is_complete():
    assert {"identity", "centroid", "c3", "realign", "moment", "anisoalign"} <= set(available_aligners())


@pytest.mark.parametrize("name,params", CASES)
def test_shapes_dtype_unit_norm(fitted, data, name, params):
    a = fitted(name, params)
    x = data[2]
    for src in (x, x.astype(np.float64), x * 3.0):  # any dtype, any scale: inputs are L2-normalised
        out = a.transform(src)
        assert out.shape == x.shape and out.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=1), 1.0, atol=1e-5)
        assert np.isfinite(out).all()
    assert a.transform(x[:0]).shape == (0, x.shape[1])


@pytest.mark.parametrize("name,params", CASES)
def test_chunk_invariance_bitwise(fitted, data, name, params):
    a = fitted(name, params)
    x = data[2]
    whole = a.transform(x)
    for cuts in CUTS:
        edges = [0, *cuts, len(x)]
        parts = np.concatenate([a.transform(x[lo:hi]) for lo, hi in zip(edges[:-1], edges[1:])])
        assert np.array_equal(whole, parts), f"blocks cut at {cuts} changed some rows' bits"


#: Cuts of a longer apply input around the transform's internal block (rowwise.BLOCK rows).
LONG_CUTS = [(1,), (BLOCK - 1,), (BLOCK, BLOCK + 1), (3, BLOCK + 300), (TILE - 1, 2 * BLOCK + 1), (777, 1500, 2001)]


@pytest.mark.parametrize("name,params", CASES)
def test_chunk_invariance_bitwise_at_clip_width(name, params):
    """At d=512 the BLAS picks other kernels and thread splits than at d=64; rows must not see it.

    The input spans several of the transform's internal blocks, so a row lands at another place
    in another block (and BLAS tile) under every cut and under a permutation of the rows.
    """
    g = planted_gap(n=600 + 2 * BLOCK + 101, d=512, seed=11)
    a = get_aligner(name, **params).fit(g.text[:600], g.image[600:1200], seed=3)
    x = g.text[600:]
    for kernel in APPLY_KERNELS:  # a new model's, and the float64 map older models keep
        a.apply_kernel = kernel
        whole = a.transform(x)
        for cuts in CUTS + LONG_CUTS:
            edges = [0, *cuts, len(x)]
            parts = np.concatenate([a.transform(x[lo:hi]) for lo, hi in zip(edges[:-1], edges[1:])])
            assert np.array_equal(whole, parts), f"{kernel}: blocks cut at {cuts} changed some rows' bits"
        order = np.random.default_rng(5).permutation(len(x))
        assert np.array_equal(a.transform(x[order]), whole[order]), f"{kernel}: reordering changed some rows' bits"
    order = np.random.default_rng(1).permutation(len(x))
    assert np.array_equal(a.transform(x[order]), whole[order]), "reordering the rows changed some rows' bits"
    one = np.concatenate([a.transform(x[i : i + 1]) for i in range(0, len(x), 97)])
    assert np.array_equal(one, whole[::97]), "rows transformed alone differ from the same rows in a block"


@pytest.mark.parametrize("name,params", CASES)
def test_transform_is_the_float64_premap_bit_for_bit(fitted, data, name, params):
    """The blocked kernels (rowwise.centred_affine_rows, the blocked generic path) give the bits
    of the plain composition: premap, then the calibration, cast to float32 once. Matrix maps
    take that path with the ``float64-rows`` apply kernel, which models saved before the kernel
    was recorded keep."""
    a = copy.deepcopy(fitted(name, params))  # the fixture's model is shared: this one is changed
    a.apply_kernel = "float64-rows"
    if a._fused(data[2], calibrated=a.calibrate) is not None:
        pytest.skip("a scalar map always takes the fused float32 kernel (tests in test_affine.py)")
    x = np.concatenate([data[2]] * 4)  # more than one internal block
    assert x.shape[0] > BLOCK
    for src in (x, x.astype(np.float64), x.astype(np.float16)):
        xh = a.premap(src)
        if a.calibrate:
            xh = l2_normalize(xh - a.mu_hat + a.mu_image)
        assert np.array_equal(a.transform(src), xh.astype(np.float32))


@pytest.mark.parametrize("name,params", CASES)
def test_save_load_round_trip(fitted, data, root, name, params):
    url, options = root
    a = fitted(name, params)
    where = a.save(f"{url}/model-{name}", storage_options=options)
    b = Aligner.load(where, storage_options=options)
    assert type(b) is type(a) and b.get_params() == a.get_params()
    state_a, state_b = a.get_state(), b.get_state()
    assert sorted(state_a) == sorted(state_b)
    for key in state_a:
        assert np.array_equal(state_a[key], state_b[key]), key
    assert np.array_equal(a.transform(data[2]), b.transform(data[2]))


def test_a_model_keeps_its_apply_kernel_and_older_models_the_float64_map(fitted, data, root):
    """The kernel is saved with the model; a model saved before it was recorded (no
    ``apply_kernel`` in its JSON) applies with the float64 map it was made with, bit for bit;
    a kernel this aniso does not have is refused by name."""
    import json

    url, options = root
    a = copy.deepcopy(fitted("anisoalign", {}))  # the fixture's model is shared: this one is changed
    where = a.save(f"{url}/model-kernel", storage_options=options)
    assert Aligner.load(where, storage_options=options).apply_kernel == "float32-tiles"
    fs, path = filesystem(where, options)
    meta = json.loads(fs.cat_file(f"{path}/aligner.json"))
    for kernel, expected in ((None, "float64-rows"), ("float16-magic", None)):
        older = {k: v for k, v in meta.items() if k != "apply_kernel"}
        if kernel is not None:
            older["apply_kernel"] = kernel
        fs.pipe_file(f"{path}/aligner.json", json.dumps(older).encode())
        if expected is None:
            with pytest.raises(StoreCorrupt, match="float16-magic"):
                Aligner.load(where, storage_options=options)
            continue
        b = Aligner.load(where, storage_options=options)
        assert b.apply_kernel == expected
        a.apply_kernel = expected
        assert np.array_equal(b.transform(data[2]), a.transform(data[2]))


def test_transform_writes_into_out_and_checks_it(fitted, data):
    a = fitted("anisoalign", {})
    x = data[2]
    out = np.full((len(x) + 5, x.shape[1]), 7.0, np.float32)
    assert a.transform(x, out=out[5:]) is not None
    assert np.array_equal(out[5:], a.transform(x)) and (out[:5] == 7.0).all()
    with pytest.raises(InputError, match="out= must be"):
        a.transform(x, out=np.empty(x.shape, np.float64))
    with pytest.raises(InputError, match="out= must be"):
        a.transform(x, out=np.empty((len(x) - 1, x.shape[1]), np.float32))


@pytest.mark.parametrize("name,params", CASES)
def test_deterministic_under_seed(fitted, data, name, params):
    text, image, x = data
    again = get_aligner(name, **params).fit(text, image, seed=3)
    assert np.array_equal(fitted(name, params).transform(x), again.transform(x))


@pytest.mark.parametrize("name,params", CASES)
def test_calibrated_methods_hit_the_image_centroid(fitted, data, name, params):
    text, image, _ = data
    a = fitted(name, params)
    if not a.calibrate:
        pytest.skip(f"{name} does not calibrate by definition")
    out = a.transform(text).astype(np.float64)
    l2 = image / np.linalg.norm(image, axis=1, keepdims=True)
    assert np.linalg.norm(out.mean(0) - l2.mean(0)) <= 1e-3


@pytest.mark.parametrize("name,params", CASES)
def test_bad_input_raises_clear_errors(data, name, params):
    text, image, x = data
    make = lambda: get_aligner(name, **params)  # noqa: E731
    with pytest.raises(NotFittedError, match="not fitted"):
        make().transform(x)
    with pytest.raises(InputError, match="dimension"):
        make().fit(text, image[:, :-1])
    bad = text.copy()
    bad[17, 3] = np.nan
    with pytest.raises(InputError, match="first bad row is 17"):
        make().fit(bad, image)
    with pytest.raises(InputError, match="too few text rows"):
        make().fit(text[:1], image)
    with pytest.raises(InputError, match="image embeddings have no variance"):
        make().fit(text, np.repeat(image[:1], 50, axis=0))
    with pytest.raises(InputError, match="no rows"):
        make().fit(text[:0], image)
    model = make().fit(text, image)
    with pytest.raises(InputError, match=r"shape \(n, 64\)"):
        model.transform(x[:, :32])
    poisoned = x.copy()
    poisoned[5, 0] = np.inf
    with pytest.raises(InputError, match="first bad row is 5"):
        model.transform(poisoned)


def test_unknown_method_and_corrupt_model(tmp_path, data):
    with pytest.raises(AnisoError, match="unknown method"):
        get_aligner("nope")
    with pytest.raises(AnisoError, match="no saved aligner"):
        Aligner.load(str(tmp_path / "missing"))


# -- parameters: validated the same way for every method -----------------------------------------
@pytest.mark.parametrize("name, params, message", [
    ("moment", {"shrink": 0.9}, r"MomentMatch: shrink: Extra inputs are not permitted \(did you mean shrinkage\?\)"),
    ("moment", {"shrinkage": 1.5}, r"MomentMatch: shrinkage: .*less than or equal to 1"),
    ("c3", {"noise": -1}, r"C3: noise: .*greater than or equal to 0"),
    ("realign", {"strength": 0.5}, r"ReAlign: strength: Extra inputs"),
    ("centroid", {"calibrate": "yes"}, r"CentroidShift: calibrate: expected true or false"),
    ("anisoalign", {"r": 3}, r"AnisoAlign: r: .*positive even"),
    ("anisoalign", {"bounded": False, "knn_budget": 0.02}, r"knn_budget applies to the bounded correction only"),
    ("anisoalign", {"knn_budget": 0.02, "match_rows": 10}, r"knn_budget applies to the closed form alone"),
    ("anisoalign", {"match_rows": -1}, r"AnisoAlign: match_rows: .*greater than or equal to 0"),
    ("anisoalign", {"match_knn_floor": 1.5}, r"AnisoAlign: match_knn_floor: .*less than or equal to 1"),
])
def test_bad_parameters_are_a_config_error_naming_them(name, params, message):
    with pytest.raises(ConfigError, match=message):
        get_aligner(name, **params)


def test_unbounded_anisoalign_reports_no_budget_and_c3_defaults_to_its_training_noise(gap):
    from aniso.methods import C3, CentroidShift

    assert AnisoAlign(bounded=False).get_params()["knn_budget"] is None
    assert AnisoAlign().get_params()["knn_budget"] is None  # the default since issue 23 (docs/quality.md)
    assert AnisoAlign(knn_budget=0.01).get_params()["knn_budget"] == 0.01
    assert C3().noise == C3.TRAIN_NOISE > 0
    text, image = gap.text[:300], gap.image[:300]
    assert not np.allclose(C3().fit(text, image).transform(text), CentroidShift().fit(text, image).transform(text))


def test_the_aligner_seed_seeds_the_fit_samples():
    """``AnisoAlign(seed=s).fit(...)`` draws its row samples with ``s`` too (one seed, not two):
    with more rows than the sample, the sample and so the fitted radial scale depend on it."""
    gap = planted_gap(n=AnisoAlign.sample_size + 500, d=16, latent=8, seed=1)
    probe = gap.text[:64]
    by_param = AnisoAlign(seed=3, budget_rows=200).fit(gap.text, gap.image).transform(probe)
    by_fit = AnisoAlign(seed=3, budget_rows=200).fit(gap.text, gap.image, seed=3).transform(probe)
    other = AnisoAlign(seed=3, budget_rows=200).fit(gap.text, gap.image, seed=0).transform(probe)
    np.testing.assert_array_equal(by_param, by_fit)
    assert not np.array_equal(by_param, other)


# -- atomic saves ------------------------------------------------------------------------------
def test_concurrent_saves_and_loads_see_one_complete_model(fitted, data, root):
    """Two writers save different models to one folder while a reader loads it: every load is
    one of the two whole models (the non-atomic save tore them: "not a zip file")."""
    import threading

    url, options = root
    text, image, x = data
    models = [fitted("realign", {}), get_aligner("realign").fit(text[::-1][:400], image[:400])]
    expected = [m.transform(x) for m in models]
    where = f"{url}/model-race"
    models[0].save(where, storage_options=options)
    rounds = 40 if url.startswith("s3://") else 150
    errors: list[BaseException] = []

    def write(model: Aligner) -> None:
        try:
            for _ in range(rounds):
                model.save(where, storage_options=options)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(m,)) for m in models]
    for t in writers:
        t.start()
    loads = 0
    while any(t.is_alive() for t in writers) or loads == 0:
        out = Aligner.load(where, storage_options=options).transform(x)
        assert any(np.array_equal(out, e) for e in expected), "a load mixed two saves"
        loads += 1
    for t in writers:
        t.join()
    assert not errors, errors
    assert loads > 5


def test_a_finished_model_is_never_replaced_by_an_uncalibrated_one(tmp_path, data):
    """A slower concurrent run's fit must not undo the faster run's calibration."""
    text, image, x = data
    final = get_aligner("realign").fit(text, image)
    uncalibrated = get_aligner("realign").fit_statistics(moments_of(text), moments_of(image))
    where = str(tmp_path / "model")
    final.save(where)
    uncalibrated.save(where)
    loaded = Aligner.load(where)
    assert loaded.fitted and np.array_equal(loaded.transform(x), final.transform(x))


@pytest.mark.parametrize("damage", ["truncated state", "garbage state", "torn json", "legacy truncated state.npz"])
def test_a_damaged_model_is_detected_and_refit(tmp_path, data, damage):
    import json

    from aniso.stages.fit import model_is_final

    text, image, x = data
    model = get_aligner("realign").fit(text, image)
    where = tmp_path / "model"
    model.save(str(where))
    meta = json.loads((where / "aligner.json").read_text())
    state = where / meta["state"]
    if damage == "truncated state":
        state.write_bytes(state.read_bytes()[:100])
    elif damage == "garbage state":
        state.write_bytes(b"not a zip file at all")
    elif damage == "torn json":
        (where / "aligner.json").write_text('{"name": "realign", "par')
    else:  # what the in-place save of earlier versions left after a crash
        meta.pop("state"), meta.pop("state_sha256")
        (where / "aligner.json").write_text(json.dumps(meta))
        (where / "state.npz").write_bytes(state.read_bytes()[:100])
    with pytest.raises(AnisoError, match="aligner") as info:
        Aligner.load(str(where))
    assert str(where) in str(info.value)
    assert Aligner.saved(str(where)) is None and not model_is_final(str(where), {})
    model.save(str(where))  # what the rerun's fit and calibration write
    assert model_is_final(str(where), {})
    assert np.array_equal(Aligner.load(str(where)).transform(x), model.transform(x))
