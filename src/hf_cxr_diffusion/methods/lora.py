"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") and DoRA (Liu et
al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation") through peft's ``LoraConfig``.

Adapters go on the U-Net's attention projections (by default) and, with
``train_text_encoder``, on the CLIP text encoder's. The artefact is diffusers'
``pytorch_lora_weights.safetensors`` written by ``StableDiffusionPipeline.save_lora_weights``
WITH the peft adapter metadata (``lora_alpha``, ``use_dora``, ``rank_pattern``...), so that
``pipe.load_lora_weights(output_dir)`` rebuilds the exact adapter: without the metadata diffusers
0.42 assumes ``lora_alpha == r``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_cxr_diffusion.artefacts import ArtefactKind
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import ensure_output_dir
from hf_cxr_diffusion.methods.base import MethodConfig, freeze_all
from hf_cxr_diffusion.methods.lowrank import ALL_LINEAR, LowRankMethod, adapter_metadata, load_lora_file, resolve_targets, save_lora_file

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from hf_cxr_diffusion.models.loading import SDComponents

logger = logging.getLogger(__name__)

DEFAULT_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
DEFAULT_TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclasses.dataclass
class LoraMethodConfig(MethodConfig):
    """Options of :class:`LoRA` (Hu et al. 2021) and :class:`DoRA` (Liu et al. 2024), passed to peft's ``LoraConfig``.

    Args:
        rank: rank r of every adapted layer (LoRA section 4.1).
        lora_alpha: alpha; the update ``B A`` is scaled by ``alpha / r`` (LoRA section 4.1).
        lora_dropout: dropout on the adapter's input (training only).
        target_modules: U-Net layers to adapt: module-name suffixes (peft's rule) or ``"all-linear"``
            (every ``nn.Linear``, as the SeLoRA paper's LoRA baseline, section 3.5).
        init_lora_weights: peft's init: ``true`` (A Kaiming-uniform, B zero), ``"gaussian"``, ``"pissa"``, ...
        use_dora: DoRA: a learned magnitude per output on top of the LoRA direction (DoRA section 4).
        train_text_encoder: also adapt the CLIP text encoder.
        text_encoder_target_modules: text-encoder layers to adapt: name suffixes or ``"all-linear"``.
    """

    rank: int = dataclasses.field(default=4, metadata={"help": "LoRA rank r of every adapted layer"})
    lora_alpha: float = dataclasses.field(default=4.0, metadata={"help": "LoRA alpha; the update is scaled by alpha / r"})
    lora_dropout: float = dataclasses.field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    target_modules: str | list[str] = dataclasses.field(
        default_factory=lambda: list(DEFAULT_UNET_TARGETS),
        metadata={"help": "U-Net layers to adapt (module name suffixes, or 'all-linear')"},
    )
    init_lora_weights: bool | str = dataclasses.field(
        default=True, metadata={"help": "peft init: true (A kaiming, B zero), 'gaussian', 'pissa', ..."}
    )
    use_dora: bool = dataclasses.field(default=False, metadata={"help": "DoRA: learn a magnitude vector per output"})
    train_text_encoder: bool = dataclasses.field(default=False, metadata={"help": "also adapt the CLIP text encoder"})
    text_encoder_target_modules: str | list[str] = dataclasses.field(
        default_factory=lambda: list(DEFAULT_TEXT_ENCODER_TARGETS),
        metadata={"help": "text encoder layers to adapt (module name suffixes, or 'all-linear')"},
    )

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise UserError(f"lora: rank must be >= 1, got {self.rank}")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"lora: lora_dropout must be in [0, 1), got {self.lora_dropout}")

    def peft_config(self, targets: list[str]) -> Any:
        """peft's ``LoraConfig`` for one component with these options and ``targets`` (names or suffixes)."""
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
    """Options of :class:`DoRA`: :class:`LoraMethodConfig` with ``use_dora`` on by default."""

    use_dora: bool = dataclasses.field(default=True, metadata={"help": "DoRA: learn a magnitude vector per output"})


class LoRA(LowRankMethod):
    """peft LoRA on the U-Net (and optionally the text encoder)."""

    name = "lora"
    config_class = LoraMethodConfig
    save_format = ArtefactKind.LORA
    artefact_holds_trainable_tensors = True
    config: LoraMethodConfig

    def apply(self, components: SDComponents) -> None:
        freeze_all(components)
        for cname, paths in resolve_targets(self.name, self.config, components).items():
            targets = self._targets()[cname]
            getattr(components, cname).add_adapter(self.config.peft_config(paths if targets == ALL_LINEAR else list(targets)))

    def save(self, components: SDComponents, output_dir: str | Path, *, base_model: str) -> Path:
        from peft.utils import get_peft_model_state_dict

        out = ensure_output_dir(output_dir)
        layers = {c: get_peft_model_state_dict(getattr(components, c)) for c in self._targets()}
        metadata = {c: adapter_metadata(getattr(components, c).peft_config["default"]) for c in self._targets()}
        save_lora_file(out, layers["unet"], metadata["unet"], layers.get("text_encoder"), metadata.get("text_encoder"))
        self.write_method_file(components, out, base_model=base_model)
        logger.info("%s adapter saved to %s", self.name, out)
        return out

    def load_saved(self, pipe: DiffusionPipeline, path: Path) -> DiffusionPipeline:
        return load_lora_file(pipe, path, self.name)


class DoRA(LoRA):
    """peft DoRA (``LoraConfig(use_dora=True)``): LoRA on the direction plus a learned magnitude."""

    name = "dora"
    config_class = DoraMethodConfig
