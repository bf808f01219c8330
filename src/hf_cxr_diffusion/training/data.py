"""Training examples from a prepared dataset folder (or hub id): images -> [-1, 1] tensors, prompts -> ids.

Images are converted to 3-channel RGB (Stable Diffusion's VAE expects 3 channels; a grey X-ray
becomes three equal channels), resized so the short side equals the resolution (bicubic) and
centre-cropped, then scaled to ``[-1, 1]``. There is no random augmentation, so a cached VAE
posterior describes exactly the image the uncached path would encode.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from hf_cxr_diffusion.data.loading import load_split
from hf_cxr_diffusion.errors import UserError

logger = logging.getLogger(__name__)


def check_columns(ds, needed: Sequence[str], source: str) -> None:
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise UserError(
            f"dataset {source!r} lacks column(s) {missing}; columns present: {ds.column_names}. "
            "Pass --image-column / --prompt-column or prepare the dataset with `cxr-diffusion prepare`"
        )


def image_to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """RGB, short side resized to ``resolution`` (bicubic), centre crop, ``[-1, 1]``, shape (3, H, W)."""
    image = image.convert("RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if new_size != image.size:
        image = image.resize(new_size, Image.BICUBIC)
    left = (new_size[0] - resolution) // 2
    top = (new_size[1] - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def tokenize(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids padded / truncated to the tokenizer's maximum length (77 for CLIP)."""
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


class ImagePromptData:
    """Indexable training examples: ``pixels(indices)`` and ``prompts[i]``."""

    def __init__(self, ds, resolution: int, image_column: str = "image", prompt_column: str = "prompt",
                 prompt_override: str | None = None) -> None:
        self.ds = ds.select_columns([image_column])
        self.image_column = image_column
        self.resolution = resolution
        self.prompts: list[str] = [prompt_override] * len(ds) if prompt_override is not None else [
            str(p) for p in ds[prompt_column]
        ]

    def __len__(self) -> int:
        return len(self.prompts)

    def pixels(self, indices: Sequence[int]) -> torch.Tensor:
        rows = self.ds[list(indices)][self.image_column]
        return torch.stack([image_to_tensor(img, self.resolution) for img in rows])


def folder_training_split(train_data_dir: str, resolution: int):
    """``--train-data-dir``: a folder of images with captions prepared in memory by the ``folder`` corpus.

    Every image goes to the train split (unless the folder's metadata names splits); columns ``image`` and
    ``prompt`` as in a prepared dataset folder. Nothing is written.
    """
    from hf_cxr_diffusion.data.preparation import prepare_dataset

    prepared = prepare_dataset(corpus="folder", data_dir=train_data_dir, resolution=resolution,
                               split_fractions=[1.0, 0.0, 0.0])
    if "train" not in prepared.dataset:
        raise UserError(f"--train-data-dir {train_data_dir}: its metadata puts no image in the train split")
    return prepared.dataset["train"]


def load_training_data(dataset: str | None, split: str, resolution: int, image_column: str, prompt_column: str,
                       prompt_override: str | None = None, *, train_data_dir: str | None = None,
                       max_samples: int | None = None, data_dir: str | None = None) -> ImagePromptData:
    """Load and check the training split (a prompt column is not needed with ``prompt_override``).

    ``train_data_dir`` replaces ``dataset`` (see :func:`folder_training_split`); ``max_samples`` keeps the first N rows;
    ``data_dir`` joins a prompts-only ``dataset`` to the local corpus (:func:`~hf_cxr_diffusion.data.load_split`).
    """
    if train_data_dir:
        ds, source, image_column, prompt_column = folder_training_split(train_data_dir, resolution), train_data_dir, "image", "prompt"
    else:
        ds, source = load_split(dataset, split, data_dir=data_dir), str(dataset)
    check_columns(ds, [image_column] + ([] if prompt_override is not None else [prompt_column]), source)
    if len(ds) == 0:
        raise UserError(f"split {split!r} of dataset {source!r} is empty")
    if max_samples is not None and max_samples < len(ds):
        logger.info("--max-train-samples %d: training on the first %d of %d images", max_samples, max_samples, len(ds))
        ds = ds.select(range(max_samples))
    logger.info("training on %d images of %s[%s]", len(ds), source, split)
    return ImagePromptData(ds, resolution, image_column, prompt_column, prompt_override)
