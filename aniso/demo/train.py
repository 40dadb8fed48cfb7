"""Train the ``aniso-demo-tiny`` weights with open_clip's contrastive loss on generated scenes.

Reproduce the shipped checkpoint (CPU, a few minutes on 2 cores)::

    python -m aniso.demo.train --out aniso/demo/weights/aniso-demo-tiny.pt

The logit scale is held fixed at a low temperature (not learned). With a learned or high
temperature the contrastive loss pulls the two modalities' cones together and the modality gap
closes; at a low fixed temperature the gap created by the random initialisation (the cone effect,
Liang et al. 2022) is kept while the pairing is learned, as in pretrained CLIP. Measured here
(1,000 held-out scenes, chance R@1 0.001; the gap is 1.12 at init):

==============  =====  ======  ====
logit scale     steps  R@1     gap
==============  =====  ======  ====
50              300    0.40    0.14
100             300    0.32    0.42
150             500    0.61    0.49
200 (shipped)   600    0.66    0.57
==============  =====  ======  ====
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aniso.demo.model import DEMO_MODEL, WEIGHTS_PATH, load_demo_weights, register_demo_config, save_demo_weights
from aniso.demo.scenes import generate

__all__ = ["TrainConfig", "train", "evaluate", "render_set"]

logger = logging.getLogger(__name__)

_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@dataclass
class TrainConfig:
    """Everything that determines the trained weights."""

    seed: int = 0
    n_train: int = 12000
    n_eval: int = 1000
    eval_seed: int = 10_000
    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 40
    logit_scale: float = 200.0
    threads: int = 2
    eval_every: int = 0  # log held-out R@1 / gap every this many steps (0: only at the end)


def render_set(n: int, seed: int, unique: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Images (uint8 ``(n, 3, 48, 48)``) and captions of ``n`` scenes; ``unique`` drops repeats."""
    images, captions, seen = [], [], set()
    rng_seed = seed
    while len(captions) < n:
        for img, cap, _ in generate(n, rng_seed):
            if unique and cap in seen:
                continue
            seen.add(cap)
            images.append(np.asarray(img, dtype=np.uint8))
            captions.append(cap)
            if len(captions) == n:
                break
        rng_seed += 1
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), captions


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255.0 - _MEAN) / _STD


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokenizer, images: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """Held-out text→image R@1 (chance 1/n) and the modality gap ‖μ_image − μ_text‖."""
    model.eval()
    img = torch.cat([model.encode_image(_normalise(images[i : i + 256]), normalize=True) for i in range(0, len(images), 256)])
    txt = torch.cat([model.encode_text(tokenizer(captions[i : i + 256]), normalize=True) for i in range(0, len(captions), 256)])
    sims = txt @ img.T
    r1 = (sims.argmax(dim=1) == torch.arange(len(captions))).float().mean().item()
    gap = (img.mean(0) - txt.mean(0)).norm().item()
    paired = (img * txt).sum(1).mean().item()
    return {"r1": r1, "chance": 1.0 / len(captions), "gap": gap, "paired_cos": paired, "n_eval": len(captions)}


def train(config: TrainConfig, out: Path | None = WEIGHTS_PATH) -> dict[str, Any]:
    """Train from scratch, evaluate on held-out scenes and (if ``out``) write the compact checkpoint."""
    import open_clip
    from open_clip.loss import ClipLoss

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    register_demo_config()
    model, _, _ = open_clip.create_model_and_transforms(DEMO_MODEL, pretrained=None)
    tokenizer = open_clip.get_tokenizer(DEMO_MODEL)

    t0 = time.perf_counter()
    train_images, train_captions = render_set(config.n_train, config.seed)
    eval_images, eval_captions = render_set(config.n_eval, config.eval_seed, unique=True)
    train_tokens = tokenizer(train_captions)
    logger.info("rendered %d train / %d eval scenes in %.1fs", len(train_captions), len(eval_captions), time.perf_counter() - t0)
    init = evaluate(model, tokenizer, eval_images, eval_captions)
    logger.info("at init: %s", init)

    loss_fn = ClipLoss()
    scale = torch.tensor(config.logit_scale)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n) and n != "logit_scale"]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.98), eps=1e-6,
    )
    gen = torch.Generator().manual_seed(config.seed)
    t0 = time.perf_counter()
    for step in range(config.steps):
        lr = config.lr * min(1.0, (step + 1) / config.warmup) * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        idx = torch.randint(0, config.n_train, (config.batch_size,), generator=gen)
        img = model.encode_image(_normalise(train_images[idx]), normalize=True)
        txt = model.encode_text(train_tokens[idx], normalize=True)
        loss = loss_fn(img, txt, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0 or step == 0:
            logger.info("step %d/%d loss %.3f (%.0fs)", step + 1, config.steps, loss.item(), time.perf_counter() - t0)
        if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < config.steps:
            logger.info("step %d: %s", step + 1, evaluate(model, tokenizer, eval_images[:300], eval_captions[:300]))
    seconds = time.perf_counter() - t0
    final = evaluate(model, tokenizer, eval_images, eval_captions)
    logger.info("trained in %.0fs: %s", seconds, final)
    result = {"config": asdict(config), "init": init, "final": final, "train_seconds": round(seconds, 1)}
    if out is not None:
        token_ids = sorted(set(train_tokens.unique().tolist()) | set(tokenizer(eval_captions).unique().tolist()))
        changed = [f"--{k.replace('_', '-')} {v}" for k, v in asdict(config).items()
                   if v != getattr(TrainConfig(), k) and k not in ("threads", "eval_every")]
        meta = dict(result, command=" ".join(["python -m aniso.demo.train", *changed, "--out", str(out)]), model=DEMO_MODEL)
        save_demo_weights(model, token_ids, Path(out), meta)
        # Re-measure from the stored fp16 file: what users get.
        reloaded, _, _ = open_clip.create_model_and_transforms(DEMO_MODEL, pretrained=None)
        load_demo_weights(reloaded, out)
        result["shipped"] = evaluate(reloaded, tokenizer, eval_images, eval_captions)
        meta["shipped"] = result["shipped"]
        save_demo_weights(model, token_ids, Path(out), meta)
        logger.info("wrote %s (%.2f MB): %s", out, Path(out).stat().st_size / 1e6, result["shipped"])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--out", type=str, default=str(WEIGHTS_PATH), help="checkpoint path ('' to skip writing)")
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(TrainConfig(**args), Path(out) if out else None)


if __name__ == "__main__":
    main()
