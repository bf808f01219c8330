"""Full fine-tuning of any non-empty subset of {U-Net, text encoder, VAE}.

The CheXpert fine-tuning paradigm study trains the seven non-empty combinations of the three
components of Stable Diffusion; each may get its own learning rate. The result is saved as a
complete diffusers pipeline folder (the trained and untouched components plus the base model's
inference scheduler; no safety checker), loaded with ``DiffusionPipeline.from_pretrained(out_dir)``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

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

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FullConfig(MethodConfig):
    components: list[str] = dataclasses.field(
        default_factory=lambda: ["unet"],
        metadata={"help": "components trained in full: a non-empty subset of unet, text_encoder, vae"},
    )
    unet_lr: float | None = dataclasses.field(default=None, metadata={"help": "U-Net learning rate (None: the base --learning-rate)"})
    text_encoder_lr: float | None = dataclasses.field(
        default=None, metadata={"help": "text encoder learning rate (None: the base --learning-rate)"}
    )
    vae_lr: float | None = dataclasses.field(default=None, metadata={"help": "VAE learning rate (None: the base --learning-rate)"})

    def __post_init__(self) -> None:
        self.components = check_components(list(self.components), "full: components")


def base_scheduler(source: str) -> Any:
    """The inference scheduler of the base pipeline ``source`` (folder or cached hub id)."""
    import diffusers
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(source)
    _, class_name = index.get("scheduler", (None, "PNDMScheduler"))
    return getattr(diffusers, class_name).from_pretrained(source, subfolder="scheduler")


def install_folder(built: Path, out_dir: Path, *, last: str) -> None:
    """Move every entry of ``built`` into ``out_dir`` (replacing same-named ones), ``last`` at the end.

    ``last`` is the file that makes the folder valid (``model_index.json``): a crash midway
    leaves no file claiming a complete pipeline.
    """
    (out_dir / last).unlink(missing_ok=True)
    for entry in sorted(built.iterdir(), key=lambda p: p.name == last):
        target = out_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)


class FullFineTuning(FineTuningMethod):
    """Train every parameter of the chosen components (the paradigm study's full fine-tunes)."""

    name = "full"
    config_class = FullConfig
    save_format = ArtefactKind.PIPELINE
    config: FullConfig

    def apply(self, components: Any) -> None:
        freeze_all(components)
        for name in self.config.components:
            getattr(components, name).requires_grad_(True)

    def trains(self, component: str) -> bool:
        return component in self.config.components

    def param_groups(self, components: Any, learning_rate: float) -> list[dict[str, Any]]:
        groups = []
        for name, module in iter_components(components):
            if name in self.config.components:
                lr = getattr(self.config, f"{name}_lr")
                groups.append({"params": list(module.parameters()), "lr": learning_rate if lr is None else lr, "name": name})
        return groups

    def save(self, components: Any, out_dir: str | Path, *, base_model: str) -> Path:
        from diffusers import StableDiffusionPipeline

        out = ensure_output_dir(out_dir)
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
            pipe.save_pretrained(tmp, safe_serialization=True)
            install_folder(Path(tmp), out, last=PIPELINE_INDEX_FILE)
        self.write_method_file(components, out, base_model=base_model)
        logger.info("full fine-tune (%s) saved as a pipeline folder in %s", "+".join(self.config.components), out)
        return out

    def load_saved(self, pipe: Any, path: Path) -> Any:
        raise UserError(
            f"{path} holds a complete fine-tuned pipeline (method 'full'), not an adapter: load it with "
            f"DiffusionPipeline.from_pretrained({str(path)!r}) (or hf_cxr_diffusion.models.loading.load_pipeline)"
        )
