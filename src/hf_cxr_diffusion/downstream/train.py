"""Train one classifier on one real/synthetic mix and evaluate it on the real test split.

Recipe of the DreamBooth/DenseNet synthetic chest X-ray study: AdamW (weight decay 0.01),
learning rate 1e-4 with cosine annealing, random horizontal flip, rotation (+-10 degrees) and
colour jitter, the best epoch chosen by validation accuracy (macro AUC in multi-label mode; on
ties the later epoch).
Augmentations are drawn per image from a seeded generator, batched on the training device.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hf_cxr_diffusion.downstream.classifier import IMAGENET_MEAN, IMAGENET_STD, build_classifier
from hf_cxr_diffusion.downstream.data import LabelSpace, Pool
from hf_cxr_diffusion.downstream.metrics import classification_metrics, selection_metric

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Classifier training options (defaults: the published recipe, except a CPU-friendly batch)."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.01
    image_size: int = 224
    arch: str = "densenet121"
    pretrained: bool = True
    rotation: float = 10.0
    jitter: float = 0.2
    seed: int = 0
    device: str | None = None
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16" (CUDA only)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """The best epoch's weights and test predictions, with the per-epoch history."""

    state_dict: dict[str, torch.Tensor]
    pretrained: bool
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    test_targets: np.ndarray | None = None
    test_probs: np.ndarray | None = None
    test_metrics: dict[str, Any] = field(default_factory=dict)


def _device(cfg: TrainConfig) -> torch.device:
    return torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 1, S, S]`` -> float ``[B, 3, S, S]`` normalised with ImageNet statistics."""
    x = images.float().div_(255.0).expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(images: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Per-image random horizontal flip, rotation (+-``cfg.rotation`` deg) and brightness/contrast jitter."""
    b = images.shape[0]
    x = images.float().div(255.0)
    draw = torch.rand(b, 4, generator=generator).to(x.device)
    angle = (draw[:, 0] * 2 - 1) * math.radians(cfg.rotation)
    flip = torch.where(draw[:, 1] < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos * flip, -sin, torch.zeros_like(cos)], 1), torch.stack([sin * flip, cos, torch.zeros_like(cos)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    brightness = 1 + (draw[:, 2] * 2 - 1) * cfg.jitter
    contrast = 1 + (draw[:, 3] * 2 - 1) * cfg.jitter
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast.view(-1, 1, 1, 1) + mean) * brightness.view(-1, 1, 1, 1)
    return normalise(x.clamp(0, 1).mul(255.0))


def _loss(space: LabelSpace) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return F.binary_cross_entropy_with_logits if space.mode == "multilabel" else F.cross_entropy


def _probs(logits: torch.Tensor, space: LabelSpace) -> torch.Tensor:
    return torch.sigmoid(logits) if space.mode == "multilabel" else torch.softmax(logits, dim=1)


def _autocast(device: torch.device, cfg: TrainConfig) -> Any:
    enabled = device.type == "cuda" and cfg.mixed_precision in ("fp16", "bf16")
    dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


@torch.no_grad()
def predict(model: torch.nn.Module, pool: Pool, space: LabelSpace, cfg: TrainConfig) -> tuple[np.ndarray, float]:
    """Class probabilities on ``pool`` (no augmentation) and the mean loss."""
    device = next(model.parameters()).device
    model.eval()
    probs, total = [], 0.0
    for start in range(0, len(pool), cfg.batch_size):
        x = normalise(pool.images[start : start + cfg.batch_size].to(device))
        y = pool.targets[start : start + cfg.batch_size].to(device)
        with _autocast(device, cfg):
            logits = model(x).float()
        total += float(_loss(space)(logits, y, reduction="sum"))
        probs.append(_probs(logits, space).cpu())
    denom = len(pool) * (space.num_outputs if space.mode == "multilabel" else 1)
    return torch.cat(probs).numpy().astype(np.float64), total / max(denom, 1)


def train_classifier(train: Pool, validation: Pool, test: Pool, space: LabelSpace, cfg: TrainConfig, label: str = "") -> TrainResult:
    """Train on ``train``, keep the best epoch on ``validation``, evaluate it on ``test``."""
    from tqdm.auto import tqdm

    device = _device(cfg)
    torch.manual_seed(cfg.seed)
    model, pretrained = build_classifier(space.num_outputs, cfg.arch, cfg.pretrained)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and cfg.mixed_precision == "fp16")
    generator = torch.Generator().manual_seed(cfg.seed)
    loss_fn = _loss(space)
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    history: list[dict[str, float]] = []
    for epoch in tqdm(range(1, cfg.epochs + 1), desc=f"train {label}", leave=False):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        seen, loss_sum = 0, 0.0
        for start in range(0, len(train), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            x = augment(train.images[idx].to(device), cfg, generator)
            y = train.targets[idx].to(device)
            with _autocast(device, cfg):
                loss = loss_fn(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += len(idx)
            loss_sum += float(loss.detach()) * len(idx)
        val_probs, val_loss = predict(model, validation, space, cfg)
        val_metric = selection_metric(validation.targets.numpy(), val_probs, space)
        history.append({"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "val_loss": val_loss, "val_metric": val_metric})
        if best is None or val_metric >= best[0]:  # ties: the later, longer-trained epoch
            best = (val_metric, epoch, copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}))
    assert best is not None
    model.load_state_dict(best[2])
    test_probs, _ = predict(model, test, space, cfg)
    targets = test.targets.numpy()
    return TrainResult(
        state_dict=best[2], pretrained=pretrained, best_epoch=best[1], history=history,
        test_targets=targets, test_probs=test_probs, test_metrics=classification_metrics(targets, test_probs, space),
    )  # fmt: skip
