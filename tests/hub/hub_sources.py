"""Helpers shared by the hub tests and their fixtures (constants, seeded pipeline call, PNG writer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

PROMPT = "Chest X-ray of a subject with Cardiomegaly"


def run_pipe(pipe) -> np.ndarray:
    """One seeded denoising step of the tiny pipeline, as latents (the U-Net's output, no VAE clipping)."""
    generator = torch.Generator("cpu").manual_seed(0)
    latents = pipe(PROMPT, num_inference_steps=1, guidance_scale=4.0, generator=generator, output_type="latent").images
    return latents.detach().numpy()


def png(path: Path, value: int, text: dict[str, str] | None = None, image: Image.Image | None = None) -> Path:
    """Save ``image`` (default: a flat 16 px grey ``value``) with PNG text chunks ``text``."""
    info = PngImagePlugin.PngInfo()
    for key, val in (text or {}).items():
        info.add_text(key, val)
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if image is not None else Image.fromarray(np.full((16, 16), value, dtype=np.uint8))).save(path, pnginfo=info)
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
