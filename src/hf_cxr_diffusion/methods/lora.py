"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") and DoRA (Liu et
al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation") through peft's ``LoraConfig``.

Adapters go on the U-Net's attention projections (by default) and, with
``train_text_encoder``, on the CLIP text encoder's. The artefact is diffusers'
``pytorch_lora_weights.safetensors`` written by ``StableDiffusionPipeline.save_lora_weights``
WITH the peft adapter metadata (``lora_alpha``, ``use_dora``, ``rank_pattern``...), so that
``pipe.load_lora_weights(out_dir)`` rebuilds the exact adapter: without the metadata diffusers
0.42 assumes ``lora_alpha == r``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hf_cxr_diffusion.artefacts import LORA_WEIGHTS_FILE, ArtefactKind
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import atomic_path, ensure_output_dir
from hf_cxr_diffusion.methods.base import FineTuningMethod, MethodConfig, freeze_all

logger = logging.getLogger(__name__)

DEFAULT_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
DEFAULT_TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
#: layer types LoRA can wrap (peft supports these for every target we offer)
LORA_LAYER_TYPES = (nn.Linear, nn.Conv2d)


def _short_name(module_name: str) -> str:
    """``a.b.to_out.0`` -> ``to_out.0``, ``a.b.to_q`` -> ``to_q``: the name a target list uses."""
    parts = module_name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def check_target_modules(model: nn.Module, targets: list[str], what: str) -> list[str]:
    """Check every target names at least one Linear/Conv2d of ``model`` (peft's suffix rule); else UserError."""
    names = [n for n, m in model.named_modules() if isinstance(m, LORA_LAYER_TYPES)]
    if not targets:
        raise UserError(f"{what}: no target modules given")
    unknown = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if unknown:
        valid = sorted({_short_name(n) for n in names})
        raise UserError(f"{what}: unknown target module(s) {unknown}; valid module names in this model: {valid}")
    return list(targets)


def target_module_names(model: nn.Module, targets: list[str]) -> list[str]:
    """Full names of the Linear layers of ``model`` matched by ``targets`` (peft's suffix rule)."""
    pattern = re.compile(rf"(.*\.)?({'|'.join(re.escape(t) for t in targets)})$")
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.fullmatch(n)]


def adapter_metadata(config: Any) -> dict[str, Any]:
    """A peft config as a JSON-able dict (sets become sorted lists) for ``*_lora_adapter_metadata``."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: sorted(v) if isinstance(v, set) else v for k, v in data.items()}


def save_lora_file(
    out_dir: Path,
    unet_layers: dict[str, torch.Tensor],
    unet_metadata: dict[str, Any],
    text_encoder_layers: dict[str, torch.Tensor] | None = None,
    text_encoder_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write peft-format LoRA state dicts + metadata with ``save_lora_weights`` (atomically)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    with atomic_path(out_dir / LORA_WEIGHTS_FILE) as tmp:
        StableDiffusionPipeline.save_lora_weights(
            tmp.parent,
            unet_lora_layers=convert_state_dict_to_diffusers(unet_layers),
            text_encoder_lora_layers=convert_state_dict_to_diffusers(text_encoder_layers) if text_encoder_layers else None,
            weight_name=tmp.name,
            unet_lora_adapter_metadata=unet_metadata,
            text_encoder_lora_adapter_metadata=text_encoder_metadata if text_encoder_layers else None,
        )
    return out_dir / LORA_WEIGHTS_FILE


def _restore_text_encoder_magnitudes(pipe: Any, path: Path, adapters_before: set[str]) -> None:
    """Copy DoRA magnitude vectors of the text encoder, which ``load_lora_weights`` drops.

    diffusers 0.42.1 + transformers 5 load the text encoder's ``…lora_magnitude_vector`` under a
    key without peft's ``.weight`` suffix, report them as unexpected and leave the freshly
    initialised magnitudes in place (the U-Net's load correctly). We copy them from the file.
    """
    from safetensors import safe_open

    prefix, suffix = "text_encoder.", ".lora_magnitude_vector"
    te = getattr(pipe, "text_encoder", None)
    with safe_open(str(path / LORA_WEIGHTS_FILE), "pt") as fh:
        keys = [k for k in fh.keys() if k.startswith(prefix) and k.endswith(suffix)]
        if not keys or te is None:
            return
        (adapter,) = set(te.peft_config) - adapters_before
        with torch.no_grad():
            for key in keys:
                target = te.get_submodule(key[len(prefix) :])[adapter].weight
                target.copy_(fh.get_tensor(key).to(device=target.device, dtype=target.dtype))


def load_lora_file(pipe: Any, path: Path, method: str) -> Any:
    """``pipe.load_lora_weights(path)`` with a UserError naming adapter and base model on mismatch."""
    base = getattr(getattr(pipe, "config", None), "_name_or_path", None) or type(pipe).__name__
    before = set(getattr(getattr(pipe, "text_encoder", None), "peft_config", None) or {})
    unet_before = set(getattr(pipe.unet, "peft_config", None) or {})
    try:
        pipe.load_lora_weights(str(path))
        _restore_text_encoder_magnitudes(pipe, path, before)
    except (ValueError, RuntimeError, KeyError, AttributeError) as err:
        raise UserError(f"{method} adapter {path} does not fit base model {base}: {err}") from err
    loaded = set(getattr(pipe.unet, "peft_config", None) or {}) - unet_before
    loaded |= set(getattr(getattr(pipe, "text_encoder", None), "peft_config", None) or {}) - before
    if not loaded:
        raise UserError(f"{method} adapter {path} does not fit base model {base}: none of its LoRA keys match its modules")
    return pipe


@dataclasses.dataclass
class LoraMethodConfig(MethodConfig):
    rank: int = dataclasses.field(default=4, metadata={"help": "LoRA rank r of every adapted layer"})
    lora_alpha: float = dataclasses.field(default=4.0, metadata={"help": "LoRA alpha; the update is scaled by alpha / r"})
    lora_dropout: float = dataclasses.field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    target_modules: list[str] = dataclasses.field(
        default_factory=lambda: list(DEFAULT_UNET_TARGETS), metadata={"help": "U-Net layers to adapt (module name suffixes)"}
    )
    init_lora_weights: bool | str = dataclasses.field(
        default=True, metadata={"help": "peft init: true (A kaiming, B zero), 'gaussian', 'pissa', ..."}
    )
    use_dora: bool = dataclasses.field(default=False, metadata={"help": "DoRA: learn a magnitude vector per output"})
    train_text_encoder: bool = dataclasses.field(default=False, metadata={"help": "also adapt the CLIP text encoder"})
    text_encoder_target_modules: list[str] = dataclasses.field(
        default_factory=lambda: list(DEFAULT_TEXT_ENCODER_TARGETS),
        metadata={"help": "text encoder layers to adapt (module name suffixes)"},
    )

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise UserError(f"lora: rank must be >= 1, got {self.rank}")

    def peft_config(self, targets: list[str]) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=targets,
            init_lora_weights=self.init_lora_weights,
            use_dora=self.use_dora,
        )


@dataclasses.dataclass
class DoraMethodConfig(LoraMethodConfig):
    use_dora: bool = dataclasses.field(default=True, metadata={"help": "DoRA: learn a magnitude vector per output"})


class LoRA(FineTuningMethod):
    """peft LoRA on the U-Net (and optionally the text encoder)."""

    name = "lora"
    config_class = LoraMethodConfig
    save_format = ArtefactKind.LORA
    config: LoraMethodConfig

    def _targets(self) -> dict[str, list[str]]:
        targets = {"unet": self.config.target_modules}
        if self.config.train_text_encoder:
            targets["text_encoder"] = self.config.text_encoder_target_modules
        return targets

    def apply(self, components: Any) -> None:
        freeze_all(components)
        for cname, targets in self._targets().items():
            model = getattr(components, cname)
            check_target_modules(model, targets, f"{self.name} on the {cname}")
            model.add_adapter(self.config.peft_config(targets))

    def trains(self, component: str) -> bool:
        return component in self._targets()

    def save(self, components: Any, out_dir: str | Path, *, base_model: str) -> Path:
        from peft.utils import get_peft_model_state_dict

        out = ensure_output_dir(out_dir)
        layers = {c: get_peft_model_state_dict(getattr(components, c)) for c in self._targets()}
        metadata = {c: adapter_metadata(getattr(components, c).peft_config["default"]) for c in self._targets()}
        save_lora_file(out, layers["unet"], metadata["unet"], layers.get("text_encoder"), metadata.get("text_encoder"))
        self.write_method_file(components, out, base_model=base_model)
        logger.info("%s adapter saved to %s", self.name, out)
        return out

    def load_saved(self, pipe: Any, path: Path) -> Any:
        return load_lora_file(pipe, path, self.name)


class DoRA(LoRA):
    """peft DoRA (``LoraConfig(use_dora=True)``): LoRA on the direction plus a learned magnitude."""

    name = "dora"
    config_class = DoraMethodConfig
