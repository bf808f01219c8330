"""Fixtures for the fine-tuning method tests: fresh tiny components, a fixed batch, a denoising loss."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

PROMPTS = ["a chest x-ray with cardiomegaly", "a normal chest x-ray"]


@pytest.fixture(scope="session")
def _loaded_components(tiny_model_dir: Path) -> Any:
    from hf_cxr_diffusion.models.loading import load_components

    return load_components(tiny_model_dir)


@pytest.fixture
def components(_loaded_components: Any) -> Any:
    """A fresh ``SDComponents`` of the tiny pipeline (fp32, CPU): deep copies of the loaded models."""
    c = _loaded_components
    return dataclasses.replace(
        c,
        unet=copy.deepcopy(c.unet),
        text_encoder=copy.deepcopy(c.text_encoder),
        vae=copy.deepcopy(c.vae),
        noise_scheduler=copy.deepcopy(c.noise_scheduler),
    )


@pytest.fixture(scope="session")
def batch(clip_tokenizer) -> dict[str, torch.Tensor]:
    """Two random 64 px images in [-1, 1], their prompt ids, and fixed noise / timesteps."""
    g = torch.Generator().manual_seed(0)
    ids = clip_tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return {
        "pixels": torch.rand(2, 3, 64, 64, generator=g) * 2 - 1,
        "input_ids": ids,
        "noise": torch.randn(2, 4, 8, 8, generator=g),
        "timesteps": torch.tensor([100, 700]),
        "latent_eps": torch.randn(2, 4, 8, 8, generator=g),
    }


def denoising_losses(c: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-sample epsilon-prediction MSE: VAE-encode, add DDPM noise, U-Net predict."""
    dist = c.vae.encode(batch["pixels"]).latent_dist
    latents = (dist.mean + dist.std * batch["latent_eps"]) * c.vae.config.scaling_factor
    noisy = c.noise_scheduler.add_noise(latents, batch["noise"], batch["timesteps"])
    hidden = c.text_encoder(batch["input_ids"])[0]
    pred = c.unet(noisy, batch["timesteps"], hidden).sample
    return F.mse_loss(pred, batch["noise"], reduction="none").mean(dim=(1, 2, 3))


def train_steps(method: Any, c: Any, batch: dict[str, torch.Tensor], steps: int = 3, lr: float = 1e-2) -> list[float]:
    """A few AdamW steps through the method's param groups and hook; returns the losses."""
    optimizer = torch.optim.AdamW(method.param_groups(c, lr))
    losses = []
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        loss = denoising_losses(c, batch).mean()
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(step, c, optimizer, lambda: denoising_losses(c, batch))
        losses.append(loss.item())
    return losses


def snapshot(c: Any) -> dict[str, torch.Tensor]:
    """Copies of every parameter, keyed ``component.name``."""
    return {
        f"{cname}.{n}": p.detach().clone()
        for cname in ("unet", "text_encoder", "vae")
        for n, p in getattr(c, cname).named_parameters()
    }


def generate(pipe_or_components: Any, seed: int = 0) -> np.ndarray:
    """Two-step generation of one 64 px image (numpy) from a pipeline or from components."""
    from diffusers import StableDiffusionPipeline

    pipe = pipe_or_components
    if not isinstance(pipe, StableDiffusionPipeline):
        c = pipe_or_components
        for m in (c.unet, c.text_encoder, c.vae):
            m.eval()
        pipe = StableDiffusionPipeline(
            vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
            scheduler=c.noise_scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = pipe(PROMPTS[0], num_inference_steps=2, generator=torch.Generator().manual_seed(seed), output_type="np")
    return out.images


@pytest.fixture
def helpers(clip_tokenizer) -> dict[str, Callable[..., Any]]:
    def fresh_pipeline(path: Path) -> Any:
        """``StableDiffusionPipeline.from_pretrained(path)`` (the session's tokenizer, to skip re-reading its vocab)."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline.from_pretrained(path, tokenizer=clip_tokenizer, safety_checker=None, requires_safety_checker=False)

    return {
        "losses": denoising_losses,
        "train": train_steps,
        "snapshot": snapshot,
        "generate": generate,
        "fresh_pipeline": fresh_pipeline,
    }
