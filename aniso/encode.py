"""The open_clip encoder: loaded once per process (or Dask worker), batched, L2-normalised float32.

``pretrained`` is an open_clip tag (``laion2b_s34b_b79k``: needs network once, or a populated
cache), a local checkpoint path, ``"demo"`` (the shipped ``aniso-demo-tiny`` weights, see
:mod:`aniso.demo`) or ``None`` (random init; tests only). The production default for real data
is ``model="ViT-B-32"``, ``pretrained="laion2b_s34b_b79k"``.

Precision ``auto`` is fp16 on CUDA and fp32 on CPU. The device, model and precision are logged
when a model loads, and ``require_gpu`` fails loudly instead of falling back to the CPU.
Image decoding and preprocessing run on a thread pool ahead of the encoding thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from aniso.config import EmbedSettings, Settings
from aniso.corpus import ItemRecord, ShardSpec, decode_image, read_shard
from aniso.errors import ConfigError, DeviceUnavailable

__all__ = [
    "Encoder",
    "EncoderKey",
    "ShardEmbedding",
    "resolve_device",
    "resolve_precision",
    "load_encoder",
    "get_encoder",
    "clear_encoder_cache",
    "embed_shard",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderKey:
    """What identifies a loaded model (the cache key)."""

    model: str
    pretrained: str | None
    device: str
    precision: str


def resolve_device(settings: EmbedSettings) -> str:
    """``"cuda"`` or ``"cpu"`` from ``settings.device``; raises when a GPU is required but absent.

    Raises
    ------
    DeviceUnavailable
        ``require_gpu`` is set, or ``device="cuda"``, and CUDA is not usable.
    """
    available = torch.cuda.is_available()
    wants_gpu = settings.require_gpu or settings.device == "cuda"
    if wants_gpu and not available:
        why = "embed.require_gpu is set" if settings.require_gpu else "embed.device is 'cuda'"
        raise DeviceUnavailable(
            f"{why} but no CUDA device is usable (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}, torch.cuda.is_available() is False). Run on a GPU "
            "worker, or set embed.require_gpu=false and embed.device=auto to allow the CPU."
        )
    if settings.device == "cpu":
        return "cpu"
    return "cuda" if available else "cpu"


def resolve_precision(settings: EmbedSettings, device: str) -> str:
    """``auto`` → fp16 on CUDA, fp32 on CPU; fp16 on CPU is refused (too slow / unsupported ops)."""
    if settings.precision == "auto":
        return "fp16" if device == "cuda" else "fp32"
    if settings.precision == "fp16" and device == "cpu":
        raise ConfigError("embed.precision=fp16 needs a CUDA device; use fp32 (or bf16) on the CPU")
    return settings.precision


class Encoder:
    """A loaded open_clip model with its preprocessing and tokenizer.

    Use :func:`get_encoder` (cached) rather than constructing one directly.
    """

    def __init__(self, key: EncoderKey, model: torch.nn.Module, preprocess, tokenizer) -> None:
        self.key = key
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = torch.device(key.device)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[key.precision]
        with torch.inference_mode():
            self.dim = int(model.encode_text(tokenizer(["probe"]).to(self.device)).shape[-1])

    @property
    def attrs(self) -> dict[str, Any]:
        """Provenance to stamp on stores: model, pretrained, device, precision, dim."""
        return {"model": self.key.model, "pretrained": self.key.pretrained, "device": self.key.device,
                "precision": self.key.precision, "dim": self.dim, "open_clip": _open_clip_version()}

    @torch.inference_mode()
    def _finish(self, features: torch.Tensor) -> np.ndarray:
        return F.normalize(features.float(), dim=-1).cpu().numpy().astype(np.float32, copy=False)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """``(len(texts), dim)`` float32, unit-norm text embeddings."""
        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            out.append(self._finish(self.model.encode_text(tokens)))
        return np.concatenate(out)

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Encode an already preprocessed batch ``(n, 3, H, W)``."""
        return self._finish(self.model.encode_image(pixels.to(self.device, dtype=self.dtype, non_blocking=True)))

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 256) -> np.ndarray:
        """``(len(images), dim)`` float32, unit-norm image embeddings of PIL images."""
        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(images), batch_size):
            pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in images[start : start + batch_size]])
            out.append(self.encode_pixels(pixels))
        return np.concatenate(out)

    def encode_image_bytes(
        self, blobs: Sequence[bytes], batch_size: int = 256, decode_workers: int = 2, timings: dict | None = None
    ) -> tuple[np.ndarray, list[str | None]]:
        """Decode (on a thread pool) and encode image bytes.

        Returns
        -------
        embeddings, errors
            ``embeddings`` is ``(len(blobs), dim)`` with zero rows where ``errors[i]`` says why
            the image could not be decoded.
        """
        timings = timings if timings is not None else {}
        embeddings = np.zeros((len(blobs), self.dim), np.float32)
        errors: list[str | None] = [None] * len(blobs)
        for start, pixels, batch_errors in self._decoded_batches(blobs, batch_size, decode_workers, timings):
            for k, err in enumerate(batch_errors):
                errors[start + k] = err
            ok = [k for k, err in enumerate(batch_errors) if err is None]
            if ok:
                t0 = time.perf_counter()
                embeddings[[start + k for k in ok]] = self.encode_pixels(pixels[ok] if len(ok) < len(pixels) else pixels)
                timings["encode"] = timings.get("encode", 0.0) + time.perf_counter() - t0
        return embeddings, errors

    def _decode_one(self, blob: bytes | None) -> tuple[torch.Tensor | None, str | None, float]:
        t0 = time.perf_counter()
        image, error = decode_image(blob or b"")
        pixels = None if image is None else self.preprocess(image)
        return pixels, error, time.perf_counter() - t0

    def _decoded_batches(
        self, blobs: Sequence[bytes], batch_size: int, workers: int, timings: dict
    ) -> Iterator[tuple[int, torch.Tensor, list[str | None]]]:
        """Yield ``(start, pixels, errors)`` per batch; up to two batches decode ahead."""
        starts = list(range(0, len(blobs), batch_size))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aniso-decode") if workers > 0 else None
        pending: deque[tuple[int, list]] = deque()

        def submit(start: int) -> None:
            chunk = blobs[start : start + batch_size]
            if pool is None:
                pending.append((start, [_done(self._decode_one(b)) for b in chunk]))
            else:
                pending.append((start, [pool.submit(self._decode_one, b) for b in chunk]))

        try:
            ahead = iter(starts)
            for start in ahead:
                submit(start)
                if len(pending) >= 2:
                    break
            while pending:
                start, futures = pending.popleft()
                t0 = time.perf_counter()
                results = [f.result() for f in futures]
                timings["decode_wait"] = timings.get("decode_wait", 0.0) + time.perf_counter() - t0
                nxt = next(ahead, None)
                if nxt is not None:
                    submit(nxt)
                timings["decode"] = timings.get("decode", 0.0) + sum(r[2] for r in results)
                fallback = next((r[0] for r in results if r[0] is not None), None)
                if fallback is None:
                    yield start, torch.zeros(0), [r[1] for r in results]
                    continue
                pixels = torch.stack([r[0] if r[0] is not None else torch.zeros_like(fallback) for r in results])
                yield start, pixels, [r[1] for r in results]
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def _done(value: Any) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def _open_clip_version() -> str:
    import open_clip

    return str(getattr(open_clip, "__version__", "unknown"))


def _resolve_pretrained(model: str, pretrained: str | None) -> tuple[str | None, Path | None]:
    """``(tag_or_path_for_open_clip, demo_weights_path)``."""
    from aniso.demo.model import DEMO_MODEL, DEMO_PRETRAINED, WEIGHTS_PATH

    if pretrained in (None, "", "none", "None"):
        return None, None
    if pretrained == DEMO_PRETRAINED:
        if model != DEMO_MODEL:
            raise ConfigError(f"pretrained='demo' is only defined for model {DEMO_MODEL!r}, not {model!r}")
        if not WEIGHTS_PATH.exists():
            raise ConfigError(f"the demo weights are missing at {WEIGHTS_PATH}; rebuild them with "
                              "`python -m aniso.demo.train`")
        return None, WEIGHTS_PATH
    return pretrained, None


def load_encoder(settings: EmbedSettings) -> Encoder:
    """Load the model described by ``settings`` (uncached; see :func:`get_encoder`).

    Raises
    ------
    DeviceUnavailable
        A GPU is required and absent.
    ConfigError
        The model or weights cannot be loaded (unknown name, missing file, no network for a tag).
    """
    import open_clip

    from aniso.demo.model import DEMO_MODEL, load_demo_weights, register_demo_config, weights_loaded_separately

    device = resolve_device(settings)
    precision = resolve_precision(settings, device)
    if settings.model == DEMO_MODEL:
        register_demo_config()
    tag, demo_path = _resolve_pretrained(settings.model, settings.pretrained)
    t0 = time.perf_counter()
    try:
        if demo_path is not None:
            with weights_loaded_separately():
                model, _, preprocess = open_clip.create_model_and_transforms(settings.model, pretrained=None, device="cpu")
            load_demo_weights(model, demo_path)
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(
                settings.model, pretrained=tag, device="cpu", load_weights=tag is not None
            )
        tokenizer = open_clip.get_tokenizer(settings.model)
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        raise ConfigError(
            f"cannot load open_clip model {settings.model!r} with pretrained={settings.pretrained!r}: {exc}. "
            "Without network use a local checkpoint path, or model='aniso-demo-tiny' with pretrained='demo'."
        ) from exc
    if settings.pretrained in (None, "", "none", "None"):
        logger.warning("open_clip model %s has random weights (pretrained=None): for tests only", settings.model)
    model = model.to(device=device, dtype={"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision])
    model.eval()
    key = EncoderKey(settings.model, settings.pretrained, device, precision)
    encoder = Encoder(key, model, preprocess, tokenizer)
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    logger.info(
        "encoder loaded in %.1fs: model=%s pretrained=%s device=%s [%s] precision=%s dim=%d "
        "(cuda available: %s)", time.perf_counter() - t0, settings.model, settings.pretrained, device, name,
        precision, encoder.dim, torch.cuda.is_available(),
    )
    return encoder


_CACHE: dict[EncoderKey, Encoder] = {}
_LOCK = threading.Lock()


def get_encoder(settings: EmbedSettings) -> Encoder:
    """The encoder for ``settings``, loaded once per process (so once per Dask worker)."""
    device = resolve_device(settings)
    key = EncoderKey(settings.model, settings.pretrained, device, resolve_precision(settings, device))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = load_encoder(settings)
        return _CACHE[key]


def clear_encoder_cache() -> None:
    """Drop every cached model (tests, or freeing GPU memory)."""
    with _LOCK:
        _CACHE.clear()


class ShardEmbedding(NamedTuple):
    """What :func:`embed_shard` returns for one shard (small enough to write from the task)."""

    embeddings: np.ndarray  # (n_items, dim) float32; zero rows where valid is False
    ids: list[str]  # one per item, in plan order
    valid: np.ndarray  # (n_items,) bool
    records: list[ItemRecord]  # one per item: status and error
    timings: dict[str, float]  # seconds: read, decode, decode_wait, encode, total; rows, failed


def embed_shard(spec: ShardSpec, settings: Settings | EmbedSettings) -> ShardEmbedding:
    """Read, decode and encode every item of one shard; bad items are recorded, not raised.

    Parameters
    ----------
    spec
        A shard from :func:`aniso.corpus.plan_shards`.
    settings
        The whole settings tree or its ``embed`` section.

    Returns
    -------
    ShardEmbedding
        All ``spec.n_items`` rows in plan order (failed items are zero rows with ``valid`` False),
        so a task writes exactly one whole store shard.
    """
    embed = settings.embed if isinstance(settings, Settings) else settings
    t_start = time.perf_counter()
    encoder = get_encoder(embed)
    items = read_shard(spec)
    timings: dict[str, float] = {"read": items.read_seconds}
    ok = items.ok()
    if spec.modality == "text":
        t0 = time.perf_counter()
        vectors = encoder.encode_texts([items.payloads[i] for i in ok], batch_size=embed.batch_size)
        timings["encode"] = time.perf_counter() - t0
        embeddings = np.zeros((len(items), encoder.dim), np.float32)
        if ok:
            embeddings[ok] = vectors
    else:
        vectors, errors = encoder.encode_image_bytes(
            [items.payloads[i] for i in ok], batch_size=embed.batch_size,
            decode_workers=embed.decode_workers, timings=timings,
        )
        embeddings = np.zeros((len(items), encoder.dim), np.float32)
        for k, i in enumerate(ok):
            if errors[k] is not None:
                items.fail(i, errors[k])
        if ok:
            embeddings[ok] = vectors
    valid = np.array([e is None for e in items.errors], dtype=bool)
    embeddings[~valid] = 0.0
    timings["total"] = time.perf_counter() - t_start
    timings["rows"] = float(len(items))
    timings["failed"] = float((~valid).sum())
    return ShardEmbedding(embeddings, list(items.ids), valid, items.records(), timings)
