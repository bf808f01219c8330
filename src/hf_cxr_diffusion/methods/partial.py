"""Shared machinery of methods that train a small subset of the existing tensors (BitFit, DiffFit).

Such a method chooses parameters by name and type; its artefact is :data:`ADAPTER_FILE`, a
safetensors file with only the trained tensors (keys ``"<component>.<parameter name>"``), which
:meth:`PartialTuning.load_saved` copies onto a base pipeline of the same architecture.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hf_cxr_diffusion.artefacts import ADAPTER_FILE, ArtefactKind
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import atomic_path, ensure_output_dir
from hf_cxr_diffusion.methods.base import (
    FineTuningMethod,
    MethodConfig,
    check_components,
    freeze_all,
    trainable_named_parameters,
)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from hf_cxr_diffusion.models.loading import SDComponents

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PartialConfig(MethodConfig):
    """Options shared by the methods that train a subset of the existing tensors.

    Args:
        components: where the selected tensors train, a non-empty subset of unet, text_encoder, vae.
    """

    components: list[str] = dataclasses.field(
        default_factory=lambda: ["unet"],
        metadata={"help": "components whose selected tensors train: a non-empty subset of unet, text_encoder, vae"},
    )

    def __post_init__(self) -> None:
        self.components = check_components(list(self.components), f"{type(self).__name__}: components")


class PartialTuning(FineTuningMethod):
    """Train the parameters :meth:`selects` picks in the configured components; save only those."""

    save_format = ArtefactKind.TENSORS
    artefact_holds_trainable_tensors = True
    config: PartialConfig

    @abc.abstractmethod
    def selects(self, module: torch.nn.Module, param_name: str) -> bool:
        """Whether parameter ``param_name`` of ``module`` (its direct owner) trains."""

    def install(self, model: torch.nn.Module) -> None:
        """Add this method's own modules to ``model`` (DiffFit's scales). Default: nothing."""

    def _models(self, holder: Any) -> list[tuple[str, torch.nn.Module]]:
        return [(name, getattr(holder, name)) for name in self.config.components]

    def apply(self, components: SDComponents) -> None:
        freeze_all(components)
        for _, model in self._models(components):
            self.install(model)
            for module in model.modules():
                for pname, p in module.named_parameters(recurse=False):
                    if self.selects(module, pname):
                        p.requires_grad_(True)

    def trains(self, component: str) -> bool:
        return component in self.config.components

    def save(self, components: SDComponents, output_dir: str | Path, *, base_model: str) -> Path:
        from safetensors.torch import save_file

        out = ensure_output_dir(output_dir)
        tensors = {k: p.detach().to("cpu").contiguous() for k, p in trainable_named_parameters(components).items()}
        with atomic_path(out / ADAPTER_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"method": self.name, "base_model": base_model})
        self.write_method_file(components, out, base_model=base_model)
        logger.info("%s: %d tensors saved to %s", self.name, len(tensors), out / ADAPTER_FILE)
        return out

    def load_saved(self, pipe: DiffusionPipeline, path: Path) -> DiffusionPipeline:
        from safetensors.torch import load_file

        state = load_file(str(path / ADAPTER_FILE))
        base = getattr(getattr(pipe, "config", None), "_name_or_path", None) or type(pipe).__name__
        params: dict[str, torch.Tensor] = {}
        for cname, model in self._models(pipe):
            self.install(model)
            params.update({f"{cname}.{n}": p for n, p in model.named_parameters()})
        for key, value in state.items():
            target = params.get(key)
            if target is None or tuple(target.shape) != tuple(value.shape):
                found = "not found" if target is None else f"of shape {tuple(target.shape)}, file has {tuple(value.shape)}"
                raise UserError(
                    f"adapter {path} ({self.name}) does not fit base model {base}: tensor {key} {found}; "
                    "load it onto the base model it was trained from"
                )
            with torch.no_grad():
                target.copy_(value.to(device=target.device, dtype=target.dtype))
        return pipe
