"""A small, self-contained offline demo: a generated captioned corpus and a tiny open_clip model.

Nothing here is needed by the pipeline itself; it exists so a fresh machine with no network can
run the real path end to end (captioned corpus → open_clip embeddings → alignment → publish).

* :mod:`aniso.demo.scenes` renders images from scene descriptions and captions them;
* :mod:`aniso.demo.model` registers the ``aniso-demo-tiny`` open_clip config and loads the
  shipped weights (``pretrained="demo"``);
* :mod:`aniso.demo.train` trains those weights with open_clip's contrastive loss
  (``python -m aniso.demo.train``).
"""

from __future__ import annotations

from aniso.demo.model import DEMO_MODEL, DEMO_PRETRAINED, load_demo_model, register_demo_config
from aniso.demo.scenes import Scene, caption, generate, render, sample_scene, write_demo_corpus

__all__ = [
    "DEMO_MODEL",
    "DEMO_PRETRAINED",
    "Scene",
    "caption",
    "generate",
    "load_demo_model",
    "register_demo_config",
    "render",
    "sample_scene",
    "write_demo_corpus",
]
