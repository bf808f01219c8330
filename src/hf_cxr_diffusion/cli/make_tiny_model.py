"""``cxr-diffusion make-tiny-model OUT_DIR``: build the offline tiny Stable Diffusion pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_cxr_diffusion.cli._common import add_resolution, add_seed


HELP = "build a tiny random-init SD pipeline folder (offline)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", type=Path, help="folder to write the diffusers pipeline to")
    add_seed(parser)
    add_resolution(parser)


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.models.tiny import make_tiny_model

    print(make_tiny_model(args.output_dir, seed=args.seed, resolution=args.resolution))
    return 0
