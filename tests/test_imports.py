"""Import weight: ``import aniso`` and the numpy inference path never import torch.

Each check runs in a fresh interpreter (``sys.modules`` of the test process already holds torch).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "zarr", "pandas", "prefect", "great_expectations", "scipy")


def _loaded_after(code: str) -> dict[str, bool]:
    probe = f"import sys, json\n{code}\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_aniso_loads_no_heavy_library():
    loaded = _loaded_after("import aniso; aniso.AnisoError; aniso.__version__")
    assert not any(loaded.values()), loaded


def test_public_names_still_resolve():
    loaded = _loaded_after(
        "import aniso\n"
        "assert aniso.ReAlign.name == 'realign' and aniso.get_aligner('moment').name == 'moment'\n"
        "assert aniso.EmbeddingStore.__name__ == 'EmbeddingStore' and callable(aniso.load_settings)\n"
        "assert set(aniso.available_aligners()) >= {'realign', 'anisoalign', 'identity'}"
    )
    assert not loaded["torch"]


def test_unknown_name_is_an_attribute_error():
    import aniso
    import aniso.methods

    with pytest.raises(AttributeError):
        aniso.NoSuchThing  # noqa: B018
    with pytest.raises(AttributeError):
        aniso.methods.NoSuchThing  # noqa: B018


@pytest.mark.parametrize("method", ["realign", "anisoalign"])
def test_fit_save_load_transform_without_torch(tmp_path, method):
    """A worker that loads a saved model and applies it (numpy inference) never imports torch;
    nor does fitting one (AnisoAlign included)."""
    loaded = _loaded_after(
        "import numpy as np\n"
        "from aniso.methods import Aligner, get_aligner\n"
        "rng = np.random.default_rng(0)\n"
        "t, i = rng.normal(size=(300, 16)) + 2, rng.normal(size=(300, 16)) - 1\n"
        f"params = {{'r': 8, 'p': 4}} if {method!r} == 'anisoalign' else {{}}\n"
        f"get_aligner({method!r}, **params).fit(t, i).save({str(tmp_path)!r})\n"
        f"out = Aligner.load({str(tmp_path)!r}).transform(t[:5])\n"
        "assert out.shape == (5, 16) and np.isfinite(out).all()"
    )
    assert not loaded["torch"]


def test_cli_help_imports_neither_settings_nor_library():
    loaded = _loaded_after("import aniso.flows.cli")
    assert not any(loaded.values()), loaded
    out = subprocess.run([sys.executable, "-m", "aniso.flows.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "produce" in out.stdout
