"""Optimizer (AdamW, 8-bit when asked and available) and learning-rate schedules.

AdamW runs torch's fused kernel (one kernel for all tensors) where every trainable tensor's device
has it (CPU and CUDA in torch >= 2.4), else its multi-tensor ``foreach`` path: the same update as the
per-tensor loop to float rounding, without a Python loop over LoRA's hundreds of small tensors
(measured 1.78 -> 0.21 ms per step for the tiny U-Net's 64 LoRA tensors, 5.45 -> 0.85 ms for the
bench model's 256, one CPU thread).

Schedules come from ``diffusers.optimization.get_scheduler``, plus ``cosine_annealing``: linear
warm-up then ``eta_min + (lr - eta_min) * (1 + cos(pi * t / T_max)) / 2`` — the closed form of
``torch.optim.lr_scheduler.CosineAnnealingLR`` used by the Prompt2MedImage LoRA study (T_max 10,000,
eta_min 1e-6), with warm-up added.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from hf_cxr_diffusion.training.config import TrainConfig

logger = logging.getLogger(__name__)


def multi_tensor_kwargs(params: list[torch.Tensor]) -> dict[str, bool]:
    """``{"fused": True}`` when torch has a fused AdamW kernel for every tensor's device and dtype, else ``{"foreach": True}``."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    fused_devices = set(_get_fused_kernels_supported_devices())
    if params and all(p.device.type in fused_devices and p.is_floating_point() for p in params):
        return {"fused": True}
    return {"foreach": True}


def build_optimizer(param_groups: list[dict[str, Any]], cfg: TrainConfig) -> tuple[torch.optim.Optimizer, str]:
    """AdamW over ``param_groups`` (fused / foreach, see the module docstring); returns it and its name (for the summary)."""
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            logger.warning("--use-8bit-adam: bitsandbytes is not installed; using torch AdamW (pip install bitsandbytes)")
        else:
            return bnb.optim.AdamW8bit(param_groups, **kwargs), "AdamW8bit"
    fast = multi_tensor_kwargs([p for group in param_groups for p in group["params"]])
    return torch.optim.AdamW(param_groups, **kwargs, **fast), f"AdamW ({next(iter(fast))})"


def cosine_annealing_lambda(base_lr: float, eta_min: float, warmup: int, t_max: int):
    """LR factor of one parameter group for ``cosine_annealing``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        t = min(step - warmup, t_max)
        lr = eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t / max(1, t_max))) / 2
        return lr / base_lr if base_lr else 0.0
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    if cfg.lr_scheduler == "cosine_annealing":
        t_max = cfg.lr_t_max or max(1, total_steps - cfg.lr_warmup_steps)
        lambdas = [cosine_annealing_lambda(g["lr"], cfg.lr_eta_min, cfg.lr_warmup_steps, t_max) for g in optimizer.param_groups]
        return LambdaLR(optimizer, lambdas)
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps,
        num_training_steps=total_steps,
        num_cycles=cfg.lr_num_cycles,
        power=cfg.lr_power,
    )
