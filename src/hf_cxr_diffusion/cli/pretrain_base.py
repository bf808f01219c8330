"""``cxr-diffusion pretrain-base --output-dir DIR``: rebuild the phantom base pipeline from seeds (not a medical model)."""

from __future__ import annotations

import argparse
import dataclasses

from hf_cxr_diffusion.cli._common import add_output_dir


HELP = "train the phantom base pipeline (phantom-base) from seeds on phantom radiographs (~90 CPU-minutes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hf_cxr_diffusion.phantoms.pretrain import PretrainBaseConfig

    add_output_dir(parser, help="folder for the trained diffusers pipeline (intermediates go to DIR-work, resumable)")
    for field in dataclasses.fields(PretrainBaseConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=type(field.default),
                            default=field.default, help=f"{field.metadata['help']} (default {field.default})")


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.phantoms.pretrain import PretrainBaseConfig, pretrain_base

    config = PretrainBaseConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainBaseConfig)})
    print(pretrain_base(args.output_dir, config))
    return 0
