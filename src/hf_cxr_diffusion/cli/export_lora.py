"""``cxr-diffusion export-lora ADAPTER --format kohya --output FILE.safetensors``: a LoRA in another tool's format."""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("kohya",)

HELP = "write a LoRA training output in the kohya / A1111 / ComfyUI key format"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", type=Path, help="LoRA training output folder (pytorch_lora_weights.safetensors)")
    parser.add_argument("--format", choices=FORMATS, default="kohya", help="key format (default kohya)")
    parser.add_argument("--output", type=Path, required=True, help="the .safetensors file to write (outside ADAPTER)")


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.hub.kohya import export_kohya

    print(export_kohya(args.adapter, args.output))
    return 0
