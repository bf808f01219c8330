"""DreamBooth prior preservation for any method (Ruiz et al. 2023, "DreamBooth: fine tuning
text-to-image diffusion models for subject-driven generation").

Class images are generated ONCE by the base model (before any method touches it) from the class
prompt with seeds ``seed + i``, saved as ``class-<i>.png`` in ``class_data_dir`` and reused by
later runs; existing images count towards ``num_class_images``. During training every batch
pairs each instance example with a class example (class index = instance index modulo the
number of class images), and the loss is ``instance_loss + prior_loss_weight * class_loss``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import atomic_path, ensure_output_dir
from hf_cxr_diffusion.training.data import image_to_tensor
from hf_cxr_diffusion.training.validation import build_pipeline, generate

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def class_image_paths(class_dir: str | Path) -> list[Path]:
    folder = Path(class_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def ensure_class_images(components: Any, class_dir: str | Path, class_prompt: str, num_images: int, seed: int,
                        resolution: int, steps: int, batch_size: int = 4) -> list[Path]:
    """Generate the missing class images with the (untouched) base ``components``; return the first ``num_images``."""
    existing = class_image_paths(class_dir)
    missing = num_images - len(existing)
    if missing > 0:
        folder = ensure_output_dir(class_dir)
        logger.info("generating %d class images for %r into %s", missing, class_prompt, folder)
        pipe = build_pipeline(components)
        start = len(existing)
        for first in range(start, num_images, batch_size):
            count = min(batch_size, num_images - first)
            for i, image in enumerate(generate(pipe, [class_prompt] * count, seed + first, resolution, steps, batch_size)):
                with atomic_path(folder / f"class-{first + i:05d}.png") as tmp:
                    image.save(tmp, format="PNG")
        existing = class_image_paths(class_dir)
    return existing[:num_images]


class ClassImages:
    """Class examples: ``pixels(indices)`` for indices below ``len(self)``."""

    def __init__(self, paths: list[Path], prompt: str, resolution: int) -> None:
        if not paths:
            raise UserError("prior preservation needs at least one class image")
        self.paths = paths
        self.prompt = prompt
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.paths)

    def pixels(self, indices) -> torch.Tensor:
        tensors = []
        for i in indices:
            with Image.open(self.paths[i]) as img:
                tensors.append(image_to_tensor(img, self.resolution))
        return torch.stack(tensors)
