"""Full fine-tuning of any non-empty subset of {U-Net, text encoder, VAE}.

The CheXpert fine-tuning paradigm study ("Pixels Under Pressure", Table 1) trains the seven
non-empty combinations of the three components of Stable Diffusion, each with its own learning
rate. The diffusion loss alone gives the VAE's decoder no gradient (it only encodes), so while the
VAE trains the study's released code adds a reconstruction term (finetune_chexpert.py lines
172-175): loss = diffusion + ``vae_recon_weight`` x MSE(decode(z), x), z the posterior sample the
diffusion loss used and x the input pixels; :meth:`FullFineTuning.auxiliary_loss` is that term.
The result is saved as a complete diffusers pipeline folder (the trained and untouched components
plus the base model's inference scheduler; no safety checker), loaded with
``DiffusionPipeline.from_pretrained(output_dir)``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hf_cxr_diffusion.artefacts import PIPELINE_INDEX_FILE, ArtefactKind
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import ensure_output_dir
from hf_cxr_diffusion.methods.base import (
    FineTuningMethod,
    MethodConfig,
    check_components,
    freeze_all,
    iter_components,
)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from hf_cxr_diffusion.models.loading import SDComponents

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FullConfig(MethodConfig):
    """Options of :class:`FullFineTuning` (the paradigm study's models 1-7).

    Args:
        components: the components trained in full, a non-empty subset of unet, text_encoder, vae.
        unet_lr: the U-Net's learning rate (None: the run's ``--learning-rate``; released scripts: 1e-5).
        text_encoder_lr: the text encoder's learning rate (None: ``--learning-rate``; released: 5e-6, 1e-6 with the U-Net).
        vae_lr: the VAE's learning rate (None: ``--learning-rate``; released: 1e-6).
        vae_recon_weight: weight of the reconstruction term MSE(decode(z), x) added while the VAE
            trains (released default 1.0; 0 turns it off, and then the decoder does not train).
    """

    components: list[str] = dataclasses.field(
        default_factory=lambda: ["unet"],
        metadata={"help": "components trained in full: a non-empty subset of unet, text_encoder, vae"},
    )
    unet_lr: float | None = dataclasses.field(default=None, metadata={"help": "U-Net learning rate (None: the base --learning-rate)"})
    text_encoder_lr: float | None = dataclasses.field(
        default=None, metadata={"help": "text encoder learning rate (None: the base --learning-rate)"}
    )
    vae_lr: float | None = dataclasses.field(default=None, metadata={"help": "VAE learning rate (None: the base --learning-rate)"})
    vae_recon_weight: float = dataclasses.field(
        default=1.0, metadata={"help": "while the VAE trains: weight of the reconstruction loss MSE(decode(z), x) (released: 1.0)"}
    )

    def __post_init__(self) -> None:
        self.components = check_components(list(self.components), "full: components")
        for name in ("unet_lr", "text_encoder_lr", "vae_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UserError(f"full: {name} must be > 0 (or None for --learning-rate), got {value}")
        if not self.vae_recon_weight >= 0:
            raise UserError(f"full: vae_recon_weight must be >= 0, got {self.vae_recon_weight}")


def base_scheduler(source: str) -> Any:
    """The inference scheduler of the base pipeline ``source`` (folder or cached hub id)."""
    import diffusers
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(source)
    _, class_name = index.get("scheduler", (None, "PNDMScheduler"))
    return getattr(diffusers, class_name).from_pretrained(source, subfolder="scheduler")


def install_folder(built: Path, output_dir: Path, *, last: str) -> None:
    """Move every entry of ``built`` into ``output_dir`` (replacing same-named ones), ``last`` at the end.

    ``last`` is the file that makes the folder valid (``model_index.json``): a crash midway
    leaves no file claiming a complete pipeline.
    """
    (output_dir / last).unlink(missing_ok=True)
    for entry in sorted(built.iterdir(), key=lambda p: p.name == last):
        target = output_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)


class FullFineTuning(FineTuningMethod):
    """Train every parameter of the chosen components (the paradigm study's full fine-tunes)."""

    name = "full"
    config_class = FullConfig
    save_format = ArtefactKind.PIPELINE
    config: FullConfig

    def apply(self, components: SDComponents) -> None:
        freeze_all(components)
        for name in self.config.components:
            getattr(components, name).requires_grad_(True)

    def trains(self, component: str) -> bool:
        return component in self.config.components

    def param_groups(self, components: SDComponents, learning_rate: float) -> list[dict[str, Any]]:
        groups = []
        for name, module in iter_components(components):
            if name in self.config.components:
                lr = getattr(self.config, f"{name}_lr")
                groups.append({"params": list(module.parameters()), "lr": learning_rate if lr is None else lr, "name": name})
        return groups

    def auxiliary_loss(
        self, components: SDComponents, pixels: torch.Tensor | None, latents: torch.Tensor | None
    ) -> torch.Tensor | None:
        """``vae_recon_weight`` x MSE(decode(latents), pixels) while the VAE trains (released finetune_chexpert.py:172-175).

        Args:
            components: the components being trained.
            pixels: the micro-batch's VAE input images in [-1, 1], ``[batch, 3, H, W]``.
            latents: the posterior draws the diffusion loss used, unscaled, differentiable through the encoder.
        """
        if pixels is None or latents is None or self.config.vae_recon_weight == 0:
            return None
        vae = components.vae
        recon = vae.decode(latents.to(vae.dtype)).sample
        return self.config.vae_recon_weight * torch.nn.functional.mse_loss(recon.float(), pixels.float())

    def save(self, components: SDComponents, output_dir: str | Path, *, base_model: str) -> Path:
        from diffusers import StableDiffusionPipeline

        out = ensure_output_dir(output_dir)
        pipe = StableDiffusionPipeline(
            vae=components.vae,
            text_encoder=components.text_encoder,
            tokenizer=components.tokenizer,
            unet=components.unet,
            scheduler=base_scheduler(components.source),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        with tempfile.TemporaryDirectory(prefix=".pipeline.", dir=out) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)  # writes .contiguous() tensors: standard layout
            install_folder(Path(tmp), out, last=PIPELINE_INDEX_FILE)
        self.write_method_file(components, out, base_model=base_model)
        logger.info("full fine-tune (%s) saved as a pipeline folder in %s", "+".join(self.config.components), out)
        return out

    def load_saved(self, pipe: DiffusionPipeline, path: Path) -> DiffusionPipeline:
        raise UserError(
            f"{path} holds a complete fine-tuned pipeline (method 'full'), not an adapter: load it with "
            f"DiffusionPipeline.from_pretrained({str(path)!r}) (or hf_cxr_diffusion.models.loading.load_pipeline)"
        )
