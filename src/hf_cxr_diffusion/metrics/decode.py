"""Decode any image input to a numpy array and the ``maxval`` of its bit depth (step 1 of every protocol).

Inputs: PIL images, numpy arrays (H x W or H x W x C, uint8 / uint16 / bool / float in [0, 1]),
torch tensors (CHW or HW float in [0, 1], a pipeline's ``output_type="pt"``), file paths, and the
``{"bytes"/"path"}`` dicts of an undecoded ``datasets.Image`` column.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hf_cxr_diffusion.errors import UserError

ImageLike = Any  # PIL.Image | np.ndarray | torch.Tensor | str | os.PathLike | {"bytes"/"path"} dict


def _open(image: ImageLike) -> Image.Image | np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise UserError(f"image file {path} does not exist; check the path")
        return Image.open(path)
    if isinstance(image, dict):  # datasets' undecoded Image value
        if image.get("bytes") is not None:
            return Image.open(io.BytesIO(image["bytes"]))
        if image.get("path"):
            return _open(image["path"])
        raise UserError(f"image dict without bytes or path: keys {sorted(image)}")
    if isinstance(image, torch.Tensor):
        array = image.detach().float().cpu().numpy()
        return np.moveaxis(array, 0, -1) if array.ndim == 3 else array
    if isinstance(image, (Image.Image, np.ndarray)):
        return image
    raise UserError(f"unsupported image type {type(image).__name__}; pass a PIL image, numpy array or file path")


def _pil_to_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(image, dtype=np.uint16)
    if image.mode == "I":  # Pillow decodes 16-bit PNGs as 32-bit "I" in some versions
        array = np.asarray(image)
        if array.min() < 0 or array.max() > 65535:
            raise UserError("32-bit integer image with values outside 0..65535; convert it to 8 or 16 bit")
        return array.astype(np.uint16)
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    if image.mode in ("1", "L", "RGB"):
        return np.asarray(image)
    if image.mode == "LA":
        return np.asarray(image)[..., 0]
    return np.asarray(image.convert("RGB"))


def maxval_of(array: np.ndarray) -> float:
    """The full-scale value of the array's bit depth: 255 (uint8), 65535 (uint16), 1 (bool, float in [0, 1])."""
    if array.dtype == np.uint8:
        return 255.0
    if array.dtype == np.uint16:
        return 65535.0
    if array.dtype == np.bool_:
        return 1.0
    if array.dtype.kind == "f":
        if array.size and (float(array.min()) < 0.0 or float(array.max()) > 1.0):
            raise UserError("float images must lie in [0, 1]; convert to uint8/uint16 or rescale")
        return 1.0
    raise UserError(f"unsupported image dtype {array.dtype}; use uint8, uint16, or float in [0, 1]")


def decode(image: ImageLike) -> tuple[np.ndarray, float]:
    """A 2-D (H x W) or colour (H x W x 3) array, alpha and singleton channels dropped, and its ``maxval``."""
    raw = _open(image)
    array = _pil_to_array(raw) if isinstance(raw, Image.Image) else raw
    maxval = maxval_of(array)
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., 0] if array.shape[-1] == 1 else array[..., :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise UserError(f"image array of shape {array.shape}: expected H x W or H x W x C with C in 1, 3, 4")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    return array, maxval


def to_grayscale(image: ImageLike) -> tuple[np.ndarray, float]:
    """A 2-D array (colour: mean of the three channels in float64) and the ``maxval`` of its bit depth."""
    array, maxval = decode(image)
    if array.ndim == 3:
        array = array.mean(axis=-1, dtype=np.float64)
    return array, maxval
