"""The classifier of the DreamBooth/DenseNet synthetic chest X-ray study, and a small CPU stand-in.

DenseNet-121 (Huang et al. 2017, torchvision) with the published head: Linear(1024 -> 512), ReLU,
Dropout(0.5), Linear(512 -> classes). ImageNet weights are used only when torchvision's cache
already holds them (no download); otherwise the network starts from scratch and the results say
``"pretrained": false``. ``small-cnn`` keeps the same head on four conv blocks, for demos and
tests that must learn in seconds on a CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from hf_cxr_diffusion.errors import UserError

logger = logging.getLogger(__name__)

ARCHS: tuple[str, ...] = ("densenet121", "small-cnn")
DENSENET121_FILE = "densenet121-a639ec97.pth"
#: ImageNet statistics the inputs are normalised with (grayscale repeated to 3 channels)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def published_head(in_features: int, num_outputs: int, hidden: int = 512, dropout: float = 0.5) -> nn.Sequential:
    """Linear(in -> 512), ReLU, Dropout(0.5), Linear(512 -> classes)."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_outputs))


class SmallCNN(nn.Module):
    """A stride-2 stem, four conv-BN-ReLU-pool blocks, global average pooling and the published head."""

    def __init__(self, num_outputs: int, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        channels = width
        for k in range(4):
            out = width * 2 ** min(k, 2)
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = published_head(channels, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def imagenet_weights_file() -> Path:
    """Where torchvision keeps the DenseNet-121 ImageNet weights (``~/.cache/torch/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / DENSENET121_FILE


def build_classifier(num_outputs: int, arch: str = "densenet121", pretrained: bool = True) -> tuple[nn.Module, bool]:
    """The network and whether it starts from ImageNet weights."""
    if arch not in ARCHS:
        raise UserError(f"--arch {arch!r} is not one of {', '.join(ARCHS)}")
    if arch == "small-cnn":
        return SmallCNN(num_outputs), False
    from torchvision.models import DenseNet121_Weights, densenet121

    use_weights = pretrained and imagenet_weights_file().is_file()
    if pretrained and not use_weights:
        logger.warning(
            "ImageNet weights for DenseNet-121 not found at %s: training from scratch (results record "
            "\"pretrained\": false). Put torchvision's %s there to start from ImageNet.",
            imagenet_weights_file(), DENSENET121_FILE,
        )  # fmt: skip
    model = densenet121(weights=DenseNet121_Weights.IMAGENET1K_V1 if use_weights else None)
    model.classifier = published_head(model.classifier.in_features, num_outputs)
    return model, use_weights
