"""``cxr-diffusion train [--config FILE.yaml] [--any-field VALUE ...]``: fine-tune a base pipeline.

Every field of :class:`hf_cxr_diffusion.training.config.TrainConfig` is a kebab-case flag; values
given on the command line override the YAML file. Example::

    cxr-diffusion train --config configs/lora-prompt2medimage.yaml \\
        --pretrained-model ./tiny-sd --dataset ./prepared --output-dir runs/lora --max-train-steps 200
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from hf_cxr_diffusion.cli._common import add_command


def _flag_kwargs(name: str, annotation, meta: dict) -> dict:
    kwargs: dict = {"default": argparse.SUPPRESS, "help": meta.get("help", "")}
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if args else annotation
    origin = typing.get_origin(base) or base
    if name == "method_config":
        return {**kwargs, "nargs": "+", "metavar": "KEY=VALUE|{JSON}"}
    if origin is bool:
        return {**kwargs, "action": argparse.BooleanOptionalAction}
    if origin is list:
        return {**kwargs, "nargs": "*"}
    if "choices" in meta:
        kwargs["choices"] = meta["choices"]
    return {**kwargs, "type": origin if origin in (int, float) else str}


def add_parser(subparsers) -> None:
    import dataclasses

    from hf_cxr_diffusion.training.config import TrainConfig, field_types

    parser = add_command(
        subparsers, "train", run, help="fine-tune Stable Diffusion with any method (LoRA, DoRA, SeLoRA, full, BitFit, DiffFit)",
        description="Fine-tune a base pipeline on a prepared dataset. Every option may also be set in --config FILE.yaml; "
        "command-line values win.",
    )
    parser.add_argument("--config", type=Path, help="YAML file of training options (e.g. configs/lora-prompt2medimage.yaml)")
    types = field_types()
    for field in dataclasses.fields(TrainConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name,
                            **_flag_kwargs(field.name, types[field.name], dict(field.metadata)))


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from hf_cxr_diffusion.training.config import TrainConfig, load_config
    from hf_cxr_diffusion.training.trainer import train

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    result = train(load_config(args.config, overrides))
    print(f"trained {result.method.name} for {result.global_step} steps (final loss {result.final_loss}); outputs in {result.output_dir}")
    return 0
