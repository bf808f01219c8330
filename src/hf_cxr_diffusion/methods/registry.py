"""The method registry: one line per fine-tuning method (name -> ``"module:Class"``, imported on first use)."""

from __future__ import annotations

from typing import Any

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.methods.base import FineTuningMethod, MethodConfig
from hf_cxr_diffusion.registry import Registry

METHODS: Registry[type[FineTuningMethod]] = Registry(
    "fine-tuning method",
    {
        "full": ".full:FullFineTuning",
        "lora": ".lora:LoRA",
        "dora": ".lora:DoRA",
        "bitfit": ".bitfit:BitFit",
        "difffit": ".difffit:DiffFit",
        "selora": ".selora:SeLoRA",
        "dylora": ".dylora:DyLoRA",
        "adalora": ".adalora:AdaLoRA",
    },
    package="hf_cxr_diffusion.methods",
    option="--method",
)


def get_method(name: str, config: dict[str, Any] | MethodConfig | None = None) -> FineTuningMethod:
    """Instantiate a registered fine-tuning method.

    Args:
        name: a key of :data:`METHODS` (``"lora"``, ``"selora"``, ...); unknown names raise a
            :class:`~hf_cxr_diffusion.errors.UserError` listing the valid ones.
        config: the method's options as a dict (unknown keys are a ``UserError``), a config object
            of the method's ``config_class``, or ``None`` for the defaults.

    Returns:
        The method, ready for ``apply(components)``.
    """
    cls = METHODS[name]
    if isinstance(config, MethodConfig):
        if not isinstance(config, cls.config_class):
            raise UserError(f"method {name!r} needs a {cls.config_class.__name__}, got {type(config).__name__}")
        return cls(config)
    return cls(cls.config_class.from_dict(dict(config or {})))
