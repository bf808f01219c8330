"""A base pipeline's U-Net, text encoder and VAE on the ``meta`` device: exact shapes, no weights read.

Parameter counts and optimizer memory of a method (``cxr-diffusion study --plan``, ``bench/methods.py``)
need only the architecture. It comes from the pipeline's ``*/config.json`` files (a local or shipped
folder, or a hub id in the local cache); Stable Diffusion 1.5 is also known without its files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hf_cxr_diffusion.errors import UserError

SD15 = "runwayml/stable-diffusion-v1-5"
#: Stable Diffusion 1.5's component configurations (its hub repo's ``unet|text_encoder|vae/config.json``)
SD15_CONFIGS: dict[str, dict[str, Any]] = {
    "unet": dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    ),
    "text_encoder": dict(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
    ),
    "vae": dict(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=512,
    ),
}
COMPONENTS = ("unet", "text_encoder", "vae")


def _config_file(name_or_path: str, component: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    from hf_cxr_diffusion.models.loading import resolve_pretrained

    resolved = resolve_pretrained(name_or_path)
    local = Path(resolved) / component / "config.json"
    if local.is_file():
        return local
    cached = try_to_load_from_cache(resolved, f"{component}/config.json")
    return Path(cached) if isinstance(cached, (str, os.PathLike)) else None


def component_configs(name_or_path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{"unet": {...}, "text_encoder": {...}, "vae": {...}}`` of a pipeline, read from its config files."""
    out: dict[str, dict[str, Any]] = {}
    for component in COMPONENTS:
        path = _config_file(str(name_or_path), component)
        if path is not None:
            out[component] = {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if not k.startswith("_")}
        elif str(name_or_path) == SD15:
            out[component] = dict(SD15_CONFIGS[component])
        else:
            raise UserError(f"{name_or_path}: no {component}/config.json on disk or in the Hugging Face cache; "
                            f"download the pipeline's config files (no weights needed) or give a local folder")
    return out


def meta_components(name_or_path: str | os.PathLike) -> SimpleNamespace:
    """The pipeline's ``unet``, ``text_encoder`` and ``vae`` built on the meta device from their configurations."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = component_configs(name_or_path)
    with torch.device("meta"):
        return SimpleNamespace(
            unet=UNet2DConditionModel.from_config(configs["unet"]),
            text_encoder=CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
            vae=AutoencoderKL.from_config(configs["vae"]),
        )
