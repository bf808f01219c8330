"""Trainable-parameter table of every fine-tuning method, on the tiny pipeline and on SD 1.5.

SD 1.5 is instantiated from its known configuration on the ``meta`` device (no weights, no
download), so the counts are exact while nothing is allocated. Memory column: what training adds
per trainable parameter in fp32 with AdamW (weight copy 4 B + gradient 4 B + two moments 8 B);
activations are not included (see ``bench/train.py`` for measured peaks).

Run: ``python bench/methods.py [--tiny-model DIR]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from hf_cxr_diffusion.methods import get_method
from hf_cxr_diffusion.models.loading import load_components
from hf_cxr_diffusion.models.tiny import make_tiny_model

#: (label, method, config, what trains)
ROWS = [
    ("full (unet)", "full", {"components": ["unet"]}, "every U-Net weight"),
    ("full (text_encoder)", "full", {"components": ["text_encoder"]}, "every text-encoder weight"),
    ("full (vae)", "full", {"components": ["vae"]}, "every VAE weight"),
    ("full (unet+text_encoder)", "full", {"components": ["unet", "text_encoder"]}, "U-Net + text encoder"),
    ("full (unet+vae)", "full", {"components": ["unet", "vae"]}, "U-Net + VAE"),
    ("full (text_encoder+vae)", "full", {"components": ["text_encoder", "vae"]}, "text encoder + VAE"),
    ("full (all)", "full", {"components": ["unet", "text_encoder", "vae"]}, "everything"),
    ("lora r=4", "lora", {"rank": 4}, "rank-4 A/B on U-Net to_q/k/v/out.0"),
    ("lora r=16 + text encoder", "lora", {"rank": 16, "train_text_encoder": True}, "rank-16 A/B on U-Net + CLIP q/k/v/out"),
    ("dora r=4", "dora", {"rank": 4}, "LoRA r=4 + a magnitude vector per adapted layer"),
    ("bitfit", "bitfit", {}, "U-Net bias terms"),
    ("difffit", "difffit", {}, "U-Net biases + norm affines + per-branch gammas"),
    ("selora (start)", "selora", {}, "rank-1 A/B on U-Net to_q/k/v/out.0 (grows)"),
]


def sd15_components() -> SimpleNamespace:
    """Stable Diffusion 1.5's U-Net, CLIP ViT-L/14 text encoder and VAE on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                projection_dim=768,
            )
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=512,
        )
    return SimpleNamespace(unet=unet, text_encoder=text_encoder, vae=vae)


def tiny_components(path: Path) -> SimpleNamespace:
    c = load_components(path)
    return SimpleNamespace(unet=c.unet, text_encoder=c.text_encoder, vae=c.vae)


def count(build, method: str, config: dict) -> tuple[int, int]:
    """(trainable, total) after applying ``method`` to freshly built components."""
    comps = build()
    get_method(method, config).apply(comps)
    params = [p for m in (comps.unet, comps.text_encoder, comps.vae) for p in m.parameters()]
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-model", type=Path, default=None, help="tiny pipeline folder (built if absent)")
    args = parser.parse_args()
    tiny_dir = args.tiny_model
    if tiny_dir is None:
        tiny_dir = make_tiny_model(Path(tempfile.mkdtemp()) / "tiny")
    print("| method | what trains | trainable (tiny) | trainable (SD 1.5) | % of SD 1.5 | + AdamW fp32 memory (SD 1.5) |")
    print("|---|---|---:|---:|---:|---:|")
    base_total = count(sd15_components, "full", {"components": ["unet", "text_encoder", "vae"]})[1]
    for label, method, config, what in ROWS:
        tiny, _ = count(lambda: tiny_components(tiny_dir), method, config)
        sd, _ = count(sd15_components, method, config)
        print(f"| {label} | {what} | {tiny:,} | {sd:,} | {100 * sd / base_total:.3f} | {sd * 16 / 2**20:,.1f} MiB |")
    print(f"\nSD 1.5 base model (U-Net + text encoder + VAE): {base_total:,} parameters")


if __name__ == "__main__":
    main()
