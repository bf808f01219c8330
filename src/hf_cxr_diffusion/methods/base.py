"""The fine-tuning method interface, modelled on peft's tuners.

A method is one module in this package holding a ``@dataclass`` config (a subclass of
:class:`MethodConfig`, every field with ``metadata={"help": ...}``) and a subclass of
:class:`FineTuningMethod`; one line in :mod:`hf_cxr_diffusion.methods.registry` registers it.

The trainer only talks to methods through this interface:

1. ``method.apply(components)`` freezes everything, then injects adapters / unfreezes what trains;
2. ``method.param_groups(components, lr)`` gives the optimizer groups (trainable params, fp32);
3. ``method.trains(name)`` says whether ``"unet"``, ``"text_encoder"`` or ``"vae"`` has trainable
   parameters (a frozen VAE / text encoder lets the trainer cache latents / embeddings);
4. ``method.after_optimizer_step(step, components, optimizer, loss_fn)`` is a hook for methods
   that change shape during training (SeLoRA's expansion); ``loss_fn()`` recomputes the loss of
   the current batch;
5. ``method.trainable_state_dict(components)`` / ``load_trainable_state_dict`` are what checkpoints
   store (only what trains, plus whatever shape information a resume needs);
6. ``method.save(components, out_dir, base_model=...)`` writes the final artefact into
   ``out_dir`` and the metadata file :data:`METHOD_FILE`; ``hf_cxr_diffusion.load_adapter(pipe,
   out_dir)`` reads it back onto a base pipeline.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

#: metadata written next to every saved adapter / model: ``{"method", "config", "base_model", "format"}``
METHOD_FILE = "cxr_method.json"

COMPONENTS: tuple[str, ...] = ("unet", "text_encoder", "vae")


@dataclasses.dataclass
class MethodConfig:
    """Base class of every method's config; fields carry ``metadata={"help": ...}``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            from hf_cxr_diffusion.errors import UserError

            raise UserError(f"unknown option(s) {unknown} for {cls.__name__}; valid: {sorted(names)}")
        return cls(**data)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text, for ``--help`` and the README table."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


class FineTuningMethod(abc.ABC):
    """One way of choosing and shaping the trainable parameters of a Stable Diffusion model."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()

    @abc.abstractmethod
    def apply(self, components: Any) -> None:
        """Freeze all of ``components`` (an ``SDComponents``), then make this method's parameters trainable."""

    @abc.abstractmethod
    def trains(self, component: str) -> bool:
        """Whether ``component`` (one of :data:`COMPONENTS`) has trainable parameters."""

    def param_groups(self, components: Any, learning_rate: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; default: every trainable parameter at ``learning_rate``."""
        params = [p for name in COMPONENTS for p in getattr(components, name).parameters() if p.requires_grad]
        return [{"params": params, "lr": learning_rate}]

    def after_optimizer_step(
        self, step: int, components: Any, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]
    ) -> None:
        """Hook run after each optimizer step (``step`` counts from 1). Default: nothing."""

    @abc.abstractmethod
    def trainable_state_dict(self, components: Any) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: the trainable tensors (keys prefixed by component name)."""

    @abc.abstractmethod
    def load_trainable_state_dict(self, components: Any, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`trainable_state_dict` onto ``components`` after :meth:`apply`."""

    @abc.abstractmethod
    def save(self, components: Any, out_dir: str | Path, *, base_model: str) -> Path:
        """Write the final artefact and :data:`METHOD_FILE` into ``out_dir``; return ``out_dir``."""
