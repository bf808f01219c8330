"""Building blocks of a training run's setup: accelerator, method, module precision/modes, the epoch plan."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.methods.base import COMPONENTS, FineTuningMethod
from hf_cxr_diffusion.training.config import TrainConfig

logger = logging.getLogger(__name__)


def resolve_method(cfg: TrainConfig, method: FineTuningMethod | None) -> FineTuningMethod:
    """The method instance: the one passed in, or ``registry.get_method(cfg.method, cfg.method_config)``."""
    if method is not None:
        return method
    from hf_cxr_diffusion.methods.registry import get_method

    return get_method(cfg.method, cfg.method_config)


def make_accelerator(cfg: TrainConfig):
    """An ``Accelerator`` for ``cfg`` (fp16 falls back to fp32 without CUDA; trackers checked installed)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    precision = cfg.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        logger.warning("--mixed-precision fp16 needs a CUDA GPU; training in fp32 on this CPU")
        precision = "no"
    log_with = None
    if cfg.report_to != "none":
        from accelerate.utils import is_tensorboard_available, is_wandb_available

        if not {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[cfg.report_to]():
            raise UserError(f"--report-to {cfg.report_to}: the {cfg.report_to} package is not installed (pip install {cfg.report_to})")
        log_with = cfg.report_to
    project = ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / "logs"))
    return Accelerator(mixed_precision=precision, log_with=log_with, project_config=project)


def tracker_config(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` flattened for experiment trackers (non-scalar values as JSON strings)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in cfg.to_dict().items()}


def model_fingerprint(components: Any) -> str:
    """Architecture of the base model (configs of U-Net, text encoder, VAE), for resume checks."""
    parts = {"unet": dict(components.unet.config), "vae": dict(components.vae.config),
             "text_encoder": components.text_encoder.config.to_diff_dict()}
    clean = {name: {k: v for k, v in part.items() if not k.startswith("_")} for name, part in parts.items()}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype of frozen tensors under ``mixed_precision`` (trainable ones stay fp32)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def prepare_modules(components: Any, method: FineTuningMethod, dtype: torch.dtype, gradient_checkpointing: bool) -> None:
    """Frozen tensors to ``dtype``, train mode only where the method trains, gradient checkpointing there."""
    for name in COMPONENTS:
        module = getattr(components, name)
        for p in module.parameters():
            if not p.requires_grad and p.dtype != dtype:
                p.data = p.data.to(dtype)
        module.train(method.trains(name))
    if gradient_checkpointing:
        if method.trains("unet"):
            components.unet.enable_gradient_checkpointing()
        if method.trains("text_encoder"):
            components.text_encoder.gradient_checkpointing_enable()
        if method.trains("vae"):
            components.vae.enable_gradient_checkpointing()


def restore_frozen_full_precision(components: Any, method: FineTuningMethod, pretrained_model: str, dtype: torch.dtype) -> None:
    """Frozen components were cast to fp16/bf16: reload them in fp32 so a saved pipeline keeps the base weights."""
    if dtype == torch.float32:
        return
    from hf_cxr_diffusion.models.loading import load_components

    fresh = load_components(pretrained_model)
    for name in COMPONENTS:
        if not method.trains(name):
            setattr(components, name, getattr(fresh, name).to(components.unet.device))


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """How ``num_images`` split into batches: each process takes a contiguous equal slice of the epoch's order.

    Args:
        per_rank: images per process per epoch.
        batches_per_epoch: micro-batches per process per epoch (a partial batch is left out of that epoch).
        total_steps: optimizer steps of the run.
        num_epochs: epochs needed for ``total_steps``.
    """

    per_rank: int
    batches_per_epoch: int
    total_steps: int
    num_epochs: int

    @classmethod
    def build(cls, cfg: TrainConfig, num_images: int, world: int) -> EpochPlan:
        per_rank = num_images // world
        if per_rank < cfg.train_batch_size:
            raise UserError(f"dataset has {num_images} images: fewer than --train-batch-size {cfg.train_batch_size} "
                            f"x {world} process(es); lower the batch size or add images")
        batches = per_rank // cfg.train_batch_size
        dropped = num_images - batches * cfg.train_batch_size * world
        if dropped:
            logger.info("%d image(s) per epoch do not fill a batch and are left out of that epoch (a new order each epoch)", dropped)
        steps_per_epoch = math.ceil(batches / cfg.gradient_accumulation_steps)
        total = cfg.max_train_steps or cfg.num_train_epochs * steps_per_epoch
        return cls(per_rank, batches, total, math.ceil(total / steps_per_epoch))

    def window(self, batch: int, accumulation: int) -> tuple[int, bool]:
        """``(micro-batches in batch's accumulation window, whether batch ends it)``; the epoch's last window may be short."""
        start = (batch // accumulation) * accumulation
        length = min(accumulation, self.batches_per_epoch - start)
        return length, batch == start + length - 1
