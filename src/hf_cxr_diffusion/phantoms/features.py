"""The phantom feature network: a small CNN the project trains on phantom radiographs (NOT a medical model).

It plays, for phantoms, the role TorchXRayVision's DenseNet-121 (Cohen et al., MIDL 2022) plays for
real chest X-rays: its pooled activations are the feature space of FID, Vendi and memorisation, and
its 14 CheXpert heads (multi-label, trained on phantoms drawn from real CheXpert label rows) are
the classifier of class consistency, the role the paradigm study's pretrained classifier plays.
Numbers computed with it carry the protocol id :data:`PROTOCOL_ID` and say nothing about medical
image quality.

Protocol ``phantom-fid-v1`` (one image at a time): a 2-D grayscale array and its bit depth's
``maxval`` (the metrics' decoder gives both) -> centre square crop -> scale to [-1, 1] -> resize to
:data:`INPUT_SIZE` px with Pillow's antialiased bilinear filter on float32 -> ``1 x S x S`` tensor.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from hf_cxr_diffusion.data.labels import CHEXPERT_LABELS
from hf_cxr_diffusion.errors import MissingWeightsError

logger = logging.getLogger(__name__)

PROTOCOL_ID = "phantom-fid-v1"
#: side of the network's input in pixels
INPUT_SIZE = 64
#: the network's labels: the 14 CheXpert observations, in the official column order
LABELS: tuple[str, ...] = CHEXPERT_LABELS
WEIGHTS_NAME = "phantom-features"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
REBUILD_COMMAND = "cxr-diffusion pretrain-features --output-dir DIR"


@dataclass(frozen=True)
class FeatureNetConfig:
    """Shape of :class:`PhantomFeatureNet`.

    Args:
        widths: channels of the four convolution stages (each: two 3x3 conv + BN + ReLU, then 2x2 max-pool
            except after the last).
        num_labels: sigmoid heads (the CheXpert observations).
    """

    widths: tuple[int, ...] = (16, 32, 64, 128)
    num_labels: int = len(LABELS)

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]


class PhantomFeatureNet(nn.Module):
    """VGG-style CNN: ``features(x)`` = ReLU + global average pool of the last stage; ``forward(x)`` = logits."""

    def __init__(self, config: FeatureNetConfig = FeatureNetConfig()) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_ch = 1
        for i, ch in enumerate(config.widths):
            for _ in range(2):
                layers += [nn.Conv2d(in_ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]
                in_ch = ch
            if i < len(config.widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(config.feature_dim, config.num_labels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``N x 1 x S x S`` preprocessed images -> ``N x feature_dim`` pooled activations."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the :data:`LABELS` heads."""
        return self.head(self.features(x))


def preprocess_gray(gray: np.ndarray, maxval: float, size: int = INPUT_SIZE) -> torch.Tensor:
    """The ``phantom-fid-v1`` protocol on a 2-D grayscale array of bit depth ``maxval``: ``1 x size x size`` in [-1, 1]."""
    h, w = gray.shape
    side = min(h, w)
    top, left = h // 2 - side // 2, w // 2 - side // 2
    crop = gray[top : top + side, left : left + side]
    scaled = (crop.astype(np.float64) / maxval * 2.0 - 1.0).astype(np.float32)
    if side != size:
        scaled = np.array(Image.fromarray(scaled).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return torch.from_numpy(scaled)[None]


def shipped_weights_dir() -> Path:
    """The folder of the feature network shipped inside the package."""
    return Path(str(resources.files("hf_cxr_diffusion.phantoms") / "weights" / WEIGHTS_NAME))


def save_feature_net(model: PhantomFeatureNet, output_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` (fp16) + ``config.json`` (shape, labels, protocol, how it was made)."""
    from safetensors.torch import save_file

    from hf_cxr_diffusion.io import atomic_path, ensure_output_dir, write_json_atomic

    out = ensure_output_dir(output_dir)
    state = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    config = {"widths": list(model.config.widths), "num_labels": model.config.num_labels, "labels": list(LABELS),
              "input_size": INPUT_SIZE, "protocol": PROTOCOL_ID, **record}
    write_json_atomic(out / CONFIG_FILE, config)
    return out


def load_feature_net(weights_dir: str | Path | None = None, *, allow_random_weights: bool = False) -> tuple[PhantomFeatureNet, dict[str, Any]]:
    """The trained network (fp32, eval mode) and its provenance (``protocol``, ``weights``, ``sha256``, ``random_weights``).

    ``weights_dir`` defaults to the shipped folder. Missing or corrupt weights raise
    :class:`MissingWeightsError` naming the file and the command that rebuilds them, unless
    ``allow_random_weights`` (tests only), which gives a seeded random network flagged as such.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from hf_cxr_diffusion.hashing import sha256_file

    folder = Path(weights_dir) if weights_dir is not None else shipped_weights_dir()
    path, config_path = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        model = PhantomFeatureNet(FeatureNetConfig(widths=tuple(config["widths"]), num_labels=config["num_labels"]))
        state = load_file(str(path))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        if not allow_random_weights:
            raise MissingWeightsError(
                f"phantom feature network weights {path} are missing or unreadable ({type(err).__name__}); "
                f"rebuild them with `{REBUILD_COMMAND}` and pass that folder, or reinstall hf-cxr-diffusion"
            ) from err
        torch.manual_seed(0)
        model = PhantomFeatureNet()
        logger.warning("phantom feature network: RANDOM weights (no usable file at %s); numbers are flagged random_weights", path)
        return model.eval(), {"protocol": PROTOCOL_ID, "weights": WEIGHTS_NAME, "sha256": None, "random_weights": True}
    provenance = {"protocol": PROTOCOL_ID, "weights": WEIGHTS_NAME if weights_dir is None else str(folder),
                  "sha256": sha256_file(path), "random_weights": False}
    return model.eval(), provenance
