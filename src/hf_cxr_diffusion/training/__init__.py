"""Training: one ``accelerate`` loop for every fine-tuning method (see :mod:`.trainer`).

    from hf_cxr_diffusion.training import TrainConfig, train
    result = train(TrainConfig(pretrained_model=..., dataset=..., output_dir=..., method="lora"))

Names are imported lazily so ``cxr-diffusion --help`` does not load torch/diffusers.
"""

from __future__ import annotations

from hf_cxr_diffusion._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "config",
    "load_config": "config",
    "train": "trainer",
    "TrainResult": "trainer",
    "NonFiniteLossError": "loss",
    "CheckpointWriteError": "checkpoints",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
