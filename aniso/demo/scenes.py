"""A generated captioned corpus: PIL-rendered scenes and captions from the same descriptions.

A *scene* is one or two coloured shapes on a plain background, each with a size and a position on
a 3×3 grid. The image is rendered from the description (with small jitter in place, size and
background shade) and the caption is written from it, so every caption is true of its image and
the pairing carries real cross-modal structure. Everything is deterministic given the seed.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from aniso._fs import join_url, open_url

__all__ = [
    "SHAPES",
    "COLOURS",
    "SIZES",
    "POSITIONS",
    "SceneObject",
    "Scene",
    "sample_scene",
    "render",
    "caption",
    "generate",
    "write_demo_corpus",
]

logger = logging.getLogger(__name__)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 50, 200),
    "orange": (245, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SIZES: dict[str, float] = {"small": 0.13, "large": 0.26}
#: grid cell (column, row) → phrase used in captions
POSITIONS: dict[tuple[int, int], str] = {
    (0, 0): "in the top left",
    (1, 0): "at the top",
    (2, 0): "in the top right",
    (0, 1): "on the left",
    (1, 1): "in the center",
    (2, 1): "on the right",
    (0, 2): "in the bottom left",
    (1, 2): "at the bottom",
    (2, 2): "in the bottom right",
}


@dataclass(frozen=True)
class SceneObject:
    """One shape: what it is and where; ``jitter`` perturbs the rendering, not the caption."""

    shape: str
    colour: str
    size: str
    cell: tuple[int, int]
    jitter: tuple[float, float, float] = (0.0, 0.0, 0.0)  # dx, dy (cell fractions), size scale


@dataclass(frozen=True)
class Scene:
    """A background shade and one or two objects in distinct grid cells."""

    objects: tuple[SceneObject, ...]
    background: int = 128


def sample_scene(rng: np.random.Generator, max_objects: int = 2) -> Scene:
    """Draw a random scene: 1..``max_objects`` objects in distinct cells, distinct colours."""
    n = int(rng.integers(1, max_objects + 1))
    cells = list(POSITIONS)
    picked = rng.choice(len(cells), size=n, replace=False)
    colour_names = list(COLOURS)
    colours = rng.choice(len(colour_names), size=n, replace=False)
    objects = []
    for k in range(n):
        objects.append(
            SceneObject(
                shape=SHAPES[int(rng.integers(len(SHAPES)))],
                colour=colour_names[int(colours[k])],
                size=("small", "large")[int(rng.integers(2))],
                cell=cells[int(picked[k])],
                jitter=(
                    float(rng.uniform(-0.15, 0.15)),
                    float(rng.uniform(-0.15, 0.15)),
                    float(rng.uniform(0.85, 1.15)),
                ),
            )
        )
    return Scene(objects=tuple(objects), background=int(rng.integers(90, 170)))


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r * 1.2), (cx + r, cy), (cx, cy + r * 1.2), (cx - r, cy)]
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, size: int = 48, supersample: int = 4) -> Image.Image:
    """Render ``scene`` as an RGB image of ``size`` × ``size`` pixels (anti-aliased)."""
    big = size * supersample
    image = Image.new("RGB", (big, big), (scene.background,) * 3)
    draw = ImageDraw.Draw(image)
    cell = big / 3.0
    for obj in scene.objects:
        dx, dy, scale = obj.jitter
        cx = (obj.cell[0] + 0.5 + dx) * cell
        cy = (obj.cell[1] + 0.5 + dy) * cell
        r = SIZES[obj.size] * big * 0.5 * scale
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_polygon(obj.shape, cx, cy, r), fill=fill)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def _phrase(obj: SceneObject) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape} {POSITIONS[obj.cell]}"


def caption(scene: Scene) -> str:
    """The caption of ``scene``: every object's size, colour, shape and position."""
    return " and ".join(_phrase(o) for o in scene.objects)


def generate(
    n: int, seed: int = 0, image_size: int = 48, max_objects: int = 2
) -> Iterator[tuple[Image.Image, str, Scene]]:
    """Yield ``n`` ``(image, caption, scene)`` triples, deterministic given ``seed``."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        scene = sample_scene(rng, max_objects=max_objects)
        yield render(scene, size=image_size), caption(scene), scene


def write_demo_corpus(
    url: str,
    n: int = 512,
    seed: int = 0,
    *,
    image_size: int = 48,
    layout: Literal["folder", "webdataset"] = "folder",
    items_per_tar: int = 256,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Write a captioned demo corpus to ``url`` (any fsspec URL).

    ``layout="folder"`` writes ``images/<id>.png`` and ``captions.jsonl`` (``id``, ``text``,
    ``image``); ``layout="webdataset"`` writes ``shards/<k>.tar`` with ``<id>.png`` and
    ``<id>.txt`` members. Ids are ``scene-<index:06d>``.

    Returns
    -------
    dict
        URLs to read back: ``{"text": ..., "images": ...}``.
    """
    import tarfile

    opts = storage_options or {}
    items = [(f"scene-{i:06d}", img, cap) for i, (img, cap, _) in enumerate(generate(n, seed, image_size))]
    if layout == "folder":
        with open_url(join_url(url, "captions.jsonl"), "wb", opts) as f:
            for key, _, cap in items:
                record = {"id": key, "text": cap, "image": f"images/{key}.png"}
                f.write((json.dumps(record) + "\n").encode())
        for key, img, _ in items:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            with open_url(join_url(url, "images", f"{key}.png"), "wb", opts) as f:
                f.write(buf.getvalue())
        out = {"text": join_url(url, "captions.jsonl"), "images": join_url(url, "images")}
    elif layout == "webdataset":
        for k, start in enumerate(range(0, n, items_per_tar)):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for key, img, cap in items[start : start + items_per_tar]:
                    png = io.BytesIO()
                    img.save(png, format="PNG")
                    for name, data in ((f"{key}.png", png.getvalue()), (f"{key}.txt", cap.encode())):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
            with open_url(join_url(url, "shards", f"{k:05d}.tar"), "wb", opts) as f:
                f.write(buf.getvalue())
        out = {"text": join_url(url, "shards"), "images": join_url(url, "shards")}
    else:
        raise ValueError(f"unknown layout {layout!r}; expected 'folder' or 'webdataset'")
    logger.info("wrote demo corpus: %d captioned scenes (%s) to %s", n, layout, url)
    return out
