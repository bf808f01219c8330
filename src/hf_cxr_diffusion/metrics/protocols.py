"""Versioned preprocessing protocols: the id that travels with every score, and what it does to an image.

- ``xrv-fid-v2`` (default): torchxrayvision's own preprocessing, exactly as the Pixels-Under-Pressure
  evaluation script (and torchxrayvision's datasets) run it: ``xrv.utils.normalize(img, maxval)``
  to [-1024, 1024] in float32 (``maxval`` from the bit depth: 255, 65535, or 1 for float in [0, 1]),
  mean of the colour channels, ``XRayCenterCrop``, ``XRayResizer(224)`` (skimage, bilinear,
  anti-aliased). Comparable with numbers computed by that pipeline on the same DenseNet weights.
- ``xrv-fid-v1``: the earlier protocol: grayscale (float64 channel mean), centre crop, bit-depth
  scaling to [-1024, 1024], Pillow bilinear (antialiased) resize on float32. Selectable for
  continuity with old reports only; not comparable with published numbers.
- ``phantom-fid-v1``: the phantom feature network's input
  (:func:`hf_cxr_diffusion.phantoms.features.preprocess_gray`); phantom numbers only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from PIL import Image

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.metrics.decode import ImageLike, decode, to_grayscale


@dataclass(frozen=True)
class Protocol:
    """A named, versioned preprocessing protocol; its ``id`` travels with every score.

    Args:
        id: the protocol id reported with every number.
        feature_model: the network the protocol feeds (``xrv`` or ``phantom``).
        size: input side in pixels.
        resize: ``xrv`` (torchxrayvision's transforms), ``pillow`` (v1) or ``phantom``.
        comparable_with: which published numbers (if any) were computed the same way.
    """

    id: str = "xrv-fid-v2"
    feature_model: str = "xrv"
    size: int = 224
    resize: str = "xrv"
    comparable_with: str = (
        "numbers computed with torchxrayvision's own transforms (normalize, XRayCenterCrop, XRayResizer(224)) on "
        "the same DenseNet weights, e.g. the Pixels-Under-Pressure evaluation script (scripts/evaluate.py)"
    )

    def describe(self) -> dict[str, Any]:
        return asdict(self)


XRV_V2 = Protocol()
XRV_V1 = Protocol(
    id="xrv-fid-v1", resize="pillow",
    comparable_with="only other xrv-fid-v1 reports of this package (Pillow resize; not torchxrayvision's pipeline)",
)
PHANTOM_V1 = Protocol(
    id="phantom-fid-v1", feature_model="phantom", size=64, resize="phantom",
    comparable_with="only other phantom-fid-v1 numbers: phantom features, not a medical measure",
)
PROTOCOLS: dict[str, Protocol] = {p.id: p for p in (XRV_V2, XRV_V1, PHANTOM_V1)}
#: the default protocol of each feature model
DEFAULT_PROTOCOL = {"xrv": XRV_V2, "phantom": PHANTOM_V1}
PROTOCOL = XRV_V2


def get_protocol(protocol: str | Protocol | None, feature_model: str = "xrv") -> Protocol:
    """The :class:`Protocol` for an id (or the feature model's default); unknown ids are a :class:`UserError`."""
    if protocol is None:
        return DEFAULT_PROTOCOL[feature_model]
    if isinstance(protocol, Protocol):
        found = protocol
    elif hasattr(protocol, "id") and hasattr(protocol, "resize"):  # a Protocol of another copy of this code (a module's core)
        found = Protocol(**{f.name: getattr(protocol, f.name) for f in fields(Protocol)})
    elif protocol in PROTOCOLS:
        found = PROTOCOLS[protocol]
    else:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(sorted(PROTOCOLS))}")
    if found.feature_model != feature_model:
        raise UserError(f"protocol {found.id!r} is for the {found.feature_model!r} feature model, not {feature_model!r}")
    return found


def _center_crop(gray: np.ndarray) -> np.ndarray:
    h, w = gray.shape
    side = min(h, w)
    top, left = h // 2 - side // 2, w // 2 - side // 2
    return gray[top : top + side, left : left + side]


def _preprocess_xrv(image: ImageLike, size: int) -> np.ndarray:
    import torchxrayvision as xrv

    array, maxval = decode(image)
    img = xrv.utils.normalize(array, maxval)  # float32 in [-1024, 1024]
    img = img.mean(axis=2)[None] if img.ndim == 3 else img[None]
    img = xrv.datasets.XRayCenterCrop()(img)
    return xrv.datasets.XRayResizer(size)(img)[0]


def _preprocess_v1(image: ImageLike, size: int) -> np.ndarray:
    gray, maxval = to_grayscale(image)
    crop = _center_crop(gray)
    scaled = ((crop.astype(np.float64) / maxval * 2.0 - 1.0) * 1024.0).astype(np.float32)
    if crop.shape[0] != size:
        scaled = np.array(Image.fromarray(scaled).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return scaled


def preprocess(image: ImageLike, protocol: Protocol = PROTOCOL) -> torch.Tensor:
    """Apply ``protocol`` to one image: a ``1 x size x size`` float32 tensor."""
    if protocol.resize == "xrv":
        return torch.from_numpy(np.ascontiguousarray(_preprocess_xrv(image, protocol.size), dtype=np.float32))[None]
    if protocol.resize == "pillow":
        return torch.from_numpy(_preprocess_v1(image, protocol.size))[None]
    if protocol.resize == "phantom":
        from hf_cxr_diffusion.phantoms.features import preprocess_gray

        gray, maxval = to_grayscale(image)
        return preprocess_gray(gray, maxval, protocol.size)
    raise UserError(f"protocol {protocol.id!r} has an unknown resize step {protocol.resize!r}")
