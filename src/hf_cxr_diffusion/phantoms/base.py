"""``phantom-base``: a small Stable Diffusion pipeline the project trains on phantom radiographs (NOT a medical model).

It plays, offline, the role Stable Diffusion 1.5 plays before a chest X-ray fine-tune: it knows
the anatomy of the phantom radiographs of :mod:`hf_cxr_diffusion.phantoms` but not the findings
vocabulary, because its captions name none (``Chest X-ray, female, age 63``). Fine-tuning on
``Chest X-ray of a subject with {findings}`` prompts then has something real to teach. The captions do
describe what is visible apart from findings — sex, body size, chest width, diaphragm height, tilt,
brightness and contrast, read off each phantom's drawing parameters — so that, like Stable Diffusion,
the base model has learnt to listen to its text encoder (with captions that say nothing, its
cross-attention is ignored and a short fine-tune cannot teach a new word). Its structure
is Stable Diffusion 1.x's (Rombach et al., CVPR 2022): an ``AutoencoderKL`` with the 8x spatial
factor, a cross-attention ``UNet2DConditionModel``, a ``CLIPTextModel`` with CLIP's real tokenizer,
and SD's scaled-linear DDPM schedule, at 64 px. It is an ordinary diffusers folder.

It is rebuilt from seeds by :func:`hf_cxr_diffusion.phantoms.pretrain.pretrain_base`.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from hf_cxr_diffusion.artefacts import PIPELINE_INDEX_FILE
from hf_cxr_diffusion.errors import MissingWeightsError

#: the name ``--pretrained-model`` accepts for the shipped folder
PHANTOM_BASE = "phantom-base"
RESOLUTION = 64
VAE_FACTOR = 8
CROSS_ATTENTION_DIM = 64
#: pretraining captions describe the patient and the acquisition, never a finding
CAPTION_EXAMPLE = "Chest X-ray, female, small patient, tilted clockwise, low contrast"
RECORD_FILE = "pretraining_record.json"
REBUILD_COMMAND = "cxr-diffusion pretrain-base --output-dir DIR"


# --------------------------------------------------------------------------- architecture
def build_untrained_pipeline(seed: int = 0):
    """The phantom base's architecture with seeded random weights (fp32, CPU)."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from hf_cxr_diffusion.models.tokenizer import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE, cached_clip_tokenizer

    latent = RESOLUTION // VAE_FACTOR
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=latent,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(64, 96, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
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
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=RESOLUTION,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=CROSS_ATTENTION_DIM,
            intermediate_size=4 * CROSS_ATTENTION_DIM,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX_LENGTH,
            projection_dim=CROSS_ATTENTION_DIM,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, steps_offset=1, prediction_type="epsilon",
    )
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=cached_clip_tokenizer(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )



# --------------------------------------------------------------------------- the shipped folder
def shipped_base_dir() -> Path:
    """Where the package ships ``phantom-base``."""
    return Path(str(resources.files("hf_cxr_diffusion.phantoms") / "weights" / PHANTOM_BASE))


def read_record(folder: str | Path | None = None) -> dict[str, Any]:
    """How a phantom base folder (default: the shipped one) was made: its :data:`RECORD_FILE`."""
    return json.loads((Path(folder) if folder is not None else phantom_base_path()).joinpath(RECORD_FILE).read_text(encoding="utf-8"))


def phantom_base_path() -> Path:
    """The shipped ``phantom-base`` folder; a clear error naming the rebuild command when it is missing."""
    path = shipped_base_dir()
    if not (path / PIPELINE_INDEX_FILE).is_file():
        raise MissingWeightsError(
            f"the phantom base pipeline is missing from {path}; rebuild it with `{REBUILD_COMMAND}` and pass "
            "--pretrained-model DIR, or reinstall hf-cxr-diffusion"
        )
    return path
