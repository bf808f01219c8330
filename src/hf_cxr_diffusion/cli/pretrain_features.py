"""``cxr-diffusion pretrain-features --output-dir DIR``: rebuild the phantom feature network from seeds (not a medical model)."""

from __future__ import annotations

import argparse
import dataclasses

from hf_cxr_diffusion.cli._common import add_output_dir


HELP = "train the phantom feature network (--feature-model phantom) from seeds on phantom radiographs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hf_cxr_diffusion.phantoms.features import PretrainFeaturesConfig

    add_output_dir(parser, help="folder for model.safetensors + config.json + README.md (intermediates go to DIR-work)")
    for field in dataclasses.fields(PretrainFeaturesConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=type(field.default),
                            default=field.default, help=f"{field.metadata['help']} (default {field.default})")


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.phantoms.features import PretrainFeaturesConfig, pretrain_features

    config = PretrainFeaturesConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainFeaturesConfig)})
    print(pretrain_features(args.output_dir, config))
    return 0
