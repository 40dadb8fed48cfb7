"""The ``aniso-demo-tiny`` open_clip model: its config and its shipped (compact) weights.

The config is a plain open_clip CLIP config (a 3-layer, width-128 ViT on 48-px images and a
3-layer, width-128 text transformer with open_clip's BPE tokenizer), registered with
:func:`open_clip.add_model_config`, so ``open_clip.create_model_and_transforms("aniso-demo-tiny")``
works like any built-in name once :func:`register_demo_config` ran.

The weights ship as ``weights/aniso-demo-tiny.pt`` (fp16, ~1.7 MB). To keep them small the
49,408-row token embedding is stored only for the token ids the demo captions use; every other
row loads as zero. ``weights/aniso-demo-tiny.json`` records the training command and the
measured held-out R@1 and modality gap.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEMO_MODEL",
    "DEMO_PRETRAINED",
    "DEMO_CONFIG",
    "WEIGHTS_PATH",
    "register_demo_config",
    "save_demo_weights",
    "load_demo_weights",
    "load_demo_model",
]

logger = logging.getLogger(__name__)

DEMO_MODEL = "aniso-demo-tiny"
DEMO_PRETRAINED = "demo"
DEMO_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 48, "layers": 3, "width": 128, "head_width": 32, "patch_size": 8, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3, "mlp_ratio": 2.0},
}
WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / f"{DEMO_MODEL}.pt"
_TOKEN_KEY = "token_embedding.weight"
_registered: Path | None = None


def register_demo_config() -> None:
    """Register the ``aniso-demo-tiny`` config with open_clip (idempotent, once per process)."""
    global _registered
    import open_clip

    if _registered is not None and DEMO_MODEL in open_clip.list_models():
        return
    folder = Path(tempfile.mkdtemp(prefix="aniso-demo-config-"))
    path = folder / f"{DEMO_MODEL}.json"
    path.write_text(json.dumps(DEMO_CONFIG, indent=1))
    open_clip.add_model_config(path)
    _registered = path


def save_demo_weights(model: torch.nn.Module, token_ids: list[int], path: Path, meta: dict[str, Any]) -> None:
    """Write ``model``'s weights compactly: fp16, token-embedding rows only for ``token_ids``."""
    state = {k: v.detach().to("cpu", torch.float16).clone() for k, v in model.state_dict().items()}
    ids = torch.tensor(sorted(set(int(t) for t in token_ids)), dtype=torch.int32)
    rows = state.pop(_TOKEN_KEY)[ids.long()].clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": 1, "model": DEMO_MODEL, "state": state, "token_ids": ids, "token_rows": rows}, path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def load_demo_weights(model: torch.nn.Module, path: Path | str = WEIGHTS_PATH) -> torch.nn.Module:
    """Load the compact demo checkpoint at ``path`` into an ``aniso-demo-tiny`` model (in place)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state = dict(payload["state"])
    current = model.state_dict()
    table = torch.zeros_like(current[_TOKEN_KEY], dtype=torch.float32)
    table[payload["token_ids"].long()] = payload["token_rows"].float()
    state[_TOKEN_KEY] = table
    state = {k: v.to(current[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model


class _DropRandomWeightsWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


@contextmanager
def weights_loaded_separately() -> Iterator[None]:
    """Silence open_clip's "initialized randomly" warning while creating a model whose weights
    are loaded right after (it would tell operators the opposite of the truth)."""
    quiet = _DropRandomWeightsWarning()
    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)


def load_demo_model(device: str = "cpu", path: Path | str = WEIGHTS_PATH):
    """``(model, preprocess, tokenizer)`` of the demo model with its shipped weights, in eval mode."""
    import open_clip

    register_demo_config()
    with weights_loaded_separately():
        model, _, preprocess = open_clip.create_model_and_transforms(DEMO_MODEL, pretrained=None, device=device)
    load_demo_weights(model, path)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(DEMO_MODEL)
