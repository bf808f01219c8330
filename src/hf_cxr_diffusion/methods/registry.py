"""The method registry: one line per fine-tuning method (name -> class)."""

from __future__ import annotations

from typing import Any

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.methods.base import FineTuningMethod, MethodConfig
from hf_cxr_diffusion.methods.bitfit import BitFit
from hf_cxr_diffusion.methods.difffit import DiffFit
from hf_cxr_diffusion.methods.full import FullFineTuning
from hf_cxr_diffusion.methods.lora import DoRA, LoRA
from hf_cxr_diffusion.methods.selora import SeLoRA

METHODS: dict[str, type[FineTuningMethod]] = {
    "full": FullFineTuning,
    "lora": LoRA,
    "dora": DoRA,
    "bitfit": BitFit,
    "difffit": DiffFit,
    "selora": SeLoRA,
}


def get_method(name: str, config: dict[str, Any] | MethodConfig | None = None) -> FineTuningMethod:
    """Instantiate method ``name`` with ``config`` (a dict of its options, a config object or None for defaults)."""
    if name not in METHODS:
        raise UserError(f"unknown fine-tuning method {name!r}; valid methods: {sorted(METHODS)}")
    cls = METHODS[name]
    if isinstance(config, MethodConfig):
        if not isinstance(config, cls.config_class):
            raise UserError(f"method {name!r} needs a {cls.config_class.__name__}, got {type(config).__name__}")
        return cls(config)
    return cls(cls.config_class.from_dict(dict(config or {})))
