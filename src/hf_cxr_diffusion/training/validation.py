"""Validation during training: image grids for fixed prompts/seeds, and XRV-FID / Vendi metrics.

Images come from a ``StableDiffusionPipeline`` assembled from the components being trained (no
copy), with the base model's noise schedule under a DDIM sampler. Prompt ``i`` always uses seed
``seed + i``, so grids from different steps are comparable. Generation uses its own generators
and eval mode, so it never perturbs the training's random streams.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from hf_cxr_diffusion.io import atomic_path
from hf_cxr_diffusion.plots import image_grid

logger = logging.getLogger(__name__)


def build_pipeline(components: Any, scheduler: Any = None):
    """A pipeline over ``components`` (shares their modules); ``scheduler`` defaults to DDIM on the base schedule."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=scheduler if scheduler is not None else DDIMScheduler.from_config(components.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


@torch.no_grad()
def generate(pipe, prompts: Sequence[str], seed: int, resolution: int, steps: int, batch_size: int = 4) -> list[Image.Image]:
    """One image per prompt; prompt ``i`` uses a generator seeded ``seed + i``."""
    device = pipe.unet.device
    images: list[Image.Image] = []
    with eval_mode(pipe.unet, pipe.text_encoder, pipe.vae):
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            gens = [torch.Generator(device=device).manual_seed(seed + start + i) for i in range(len(chunk))]
            out = pipe(chunk, generator=gens, num_inference_steps=steps, height=resolution, width=resolution,
                       output_type="pil")
            images.extend(out.images)
    return images


def save_grid(images: Sequence[Image.Image], path: str | Path) -> Path:
    """Save images side by side (up to 4 per row) as one PNG, atomically."""
    grid = image_grid([img.convert("RGB") for img in images], ncols=min(4, len(images)), pad=0)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return Path(path)


def metric_value(result: Any) -> float:
    """The scalar of one metric result (a number, or a dict with ``value`` / ``score``); None -> NaN (too few images)."""
    if isinstance(result, dict):
        for key in ("value", "score", "fid", "vendi"):
            if key in result:
                return metric_value(result[key])
        raise ValueError(f"metric result has no value: {sorted(result)}")
    return float("nan") if result is None else float(result)


def validation_metrics(real: Sequence[Image.Image], synthetic: Sequence[Image.Image], metrics: Sequence[str],
                       allow_random_weights: bool, weights_path: str | None) -> dict[str, float]:
    """XRV-FID / Vendi of ``synthetic`` against held-out ``real`` via :mod:`hf_cxr_diffusion.metrics`."""
    from hf_cxr_diffusion.metrics import evaluate_images

    kwargs: dict[str, Any] = {"metrics": tuple(metrics), "allow_random_weights": allow_random_weights}
    if weights_path:
        kwargs["weights_path"] = weights_path
    results = evaluate_images(list(real), list(synthetic), **kwargs)
    return {name: metric_value(results[name]) for name in metrics}
