"""A tiny, seeded, randomly initialised Stable Diffusion pipeline built entirely offline.

It has Stable Diffusion 1.x's structure (a ``UNet2DConditionModel`` with cross-attention, an
``AutoencoderKL`` with the same 8x spatial factor, a ``CLIPTextModel`` and CLIP's real tokenizer)
at a size that trains in seconds on a CPU. It is saved as an ordinary diffusers folder, so every
code path that takes ``runwayml/stable-diffusion-v1-5`` takes this folder too. Its outputs are
noise-like until trained: it exists to exercise the software, never to judge image quality.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import atomic_path, ensure_output_dir
from hf_cxr_diffusion.models.tokenizer import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE, cached_clip_tokenizer

logger = logging.getLogger(__name__)

#: spatial down-sampling of the tiny VAE (same as Stable Diffusion's)
VAE_FACTOR = 8
CROSS_ATTENTION_DIM = 32


def build_tiny_pipeline(seed: int = 0, resolution: int = 64) -> StableDiffusionPipeline:
    """Build the tiny pipeline in memory (fp32, CPU), deterministically from ``seed``."""
    if resolution <= 0 or resolution % VAE_FACTOR:
        raise UserError(f"--resolution {resolution} is not a positive multiple of the VAE factor {VAE_FACTOR}; use e.g. 64")
    latent = resolution // VAE_FACTOR
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=latent,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=resolution,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=CROSS_ATTENTION_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX_LENGTH,
            projection_dim=CROSS_ATTENTION_DIM,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=cached_clip_tokenizer(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def make_tiny_model(output_dir: str | Path, seed: int = 0, resolution: int = 64) -> Path:
    """Build the tiny pipeline and save it as a diffusers folder at ``output_dir`` (atomically)."""
    pipe = build_tiny_pipeline(seed=seed, resolution=resolution)
    out = Path(output_dir)
    ensure_output_dir(out.parent if out.parent != Path("") else Path("."))
    with atomic_path(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    n_params = sum(p.numel() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    logger.info("tiny pipeline (%d parameters, %d px) saved to %s", n_params, resolution, out)
    return out
