"""``cxr-diffusion train [--config FILE.yaml] [--any-field VALUE ...]``: fine-tune a base pipeline.

Every field of :class:`hf_cxr_diffusion.training.config.TrainConfig` is a kebab-case flag; values
given on the command line override the YAML file. Example::

    cxr-diffusion train --config configs/lora-prompt2medimage.yaml \\
        --pretrained-model ./tiny-sd --dataset ./prepared --output-dir runs/lora --max-train-steps 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_cxr_diffusion.cli._common import add_command, add_config_flags, config_values


def add_parser(subparsers) -> None:
    from hf_cxr_diffusion.training.config import TrainConfig

    parser = add_command(
        subparsers, "train", run, help="fine-tune Stable Diffusion with any method (LoRA, DoRA, SeLoRA, full, BitFit, DiffFit)",
        description="Fine-tune a base pipeline on a prepared dataset. Every option may also be set in --config FILE.yaml; "
        "command-line values win.",
    )
    parser.add_argument("--config", type=Path, help="YAML file of training options (e.g. configs/lora-prompt2medimage.yaml)")
    add_config_flags(parser, TrainConfig, overrides={"method_config": {"nargs": "+", "metavar": "KEY=VALUE|{JSON}"}})


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.training.config import TrainConfig, load_config
    from hf_cxr_diffusion.training.trainer import train

    result = train(load_config(args.config, config_values(args, TrainConfig)))
    print(f"trained {result.method.name} for {result.global_step} steps (final loss {result.final_loss}); outputs in {result.output_dir}")
    return 0
