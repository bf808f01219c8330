"""Building blocks of a training run's setup: accelerator, method, module precision/modes, the epoch plan."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import hashlib
import json
import logging
import math
import shutil
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
    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    project = ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / cfg.logging_dir))
    return Accelerator(mixed_precision=precision, log_with=log_with, project_config=project)


def check_metric_weights(cfg: TrainConfig) -> None:
    """Validation metrics / ``--keep-best`` need the feature network's weights: a missing file stops the run at its start."""
    if cfg.validation_metrics_steps <= 0 or not cfg.validation_metrics or cfg.metrics_allow_random_weights:
        return
    if cfg.max_train_steps is not None and cfg.max_train_steps < cfg.validation_metrics_steps:
        return  # the metrics run every validation_metrics_steps steps only: never in this run
    from hf_cxr_diffusion.metrics.features import resolve_weights_file

    try:
        resolve_weights_file(weights_path=cfg.metrics_weights_path)
    except UserError as err:
        raise type(err)(f"--validation-metrics {','.join(cfg.validation_metrics)} (every {cfg.validation_metrics_steps} "
                        f"steps) would fail then: {err}") from None


def planned_checkpoints(cfg: TrainConfig, total_steps: int) -> int:
    """How many ``checkpoint-<step>`` folders are on disk at once at most (``--checkpoints-total-limit`` applied)."""
    count = total_steps // cfg.checkpointing_steps if cfg.checkpointing_steps > 0 else 0
    return min(count, cfg.checkpoints_total_limit) if cfg.checkpoints_total_limit is not None else count


def check_disk_space(cfg: TrainConfig, output_dir: Path, trainable_numel: int, total_steps: int) -> int:
    """Stop now if the planned checkpoints (+ best copy and final artefact) cannot fit on the output disk.

    Estimate per checkpoint: the trainable tensors in fp32 plus AdamW's two moments (and the EMA copy with
    ``--use-ema``); returns the estimate in bytes.
    """
    per_checkpoint = trainable_numel * 4 * (3 + int(cfg.use_ema))
    copies = planned_checkpoints(cfg, total_steps) + int(cfg.keep_best is not None)
    needed = per_checkpoint * copies + trainable_numel * 4
    free = shutil.disk_usage(output_dir).free
    if needed > free:
        raise UserError(f"{output_dir}: {free / 2**30:.2f} GiB free, but {copies} checkpoint(s) of about "
                        f"{per_checkpoint / 2**30:.2f} GiB each and the final weights need {needed / 2**30:.2f} GiB; "
                        "free disk space, raise --checkpointing-steps or set --checkpoints-total-limit")
    return needed


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


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``; a no-op without glibc).

    The loop's activations are freed after every step but stay resident in the heap, so whatever runs after
    training (the final reload check loads a second pipeline) would add its memory on top of them: on the bench
    model this lowered the current RSS by 165 MiB before the reload check and its peak by 95 MiB.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def restore_frozen_full_precision(components: Any, method: FineTuningMethod, cfg: TrainConfig, dtype: torch.dtype) -> None:
    """Frozen components were cast to fp16/bf16: reload them in fp32 so a saved pipeline keeps the base weights."""
    if dtype == torch.float32:
        return
    from hf_cxr_diffusion.models.loading import load_components

    fresh = load_components(cfg.pretrained_model, **cfg.base_load_kwargs)
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
        steps_per_epoch: optimizer steps of one epoch.
    """

    per_rank: int
    batches_per_epoch: int
    total_steps: int
    num_epochs: int
    steps_per_epoch: int

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
        return cls(per_rank, batches, total, math.ceil(total / steps_per_epoch), steps_per_epoch)

    def window(self, batch: int, accumulation: int) -> tuple[int, bool]:
        """``(micro-batches in batch's accumulation window, whether batch ends it)``; the epoch's last window may be short."""
        start = (batch // accumulation) * accumulation
        length = min(accumulation, self.batches_per_epoch - start)
        return length, batch == start + length - 1
