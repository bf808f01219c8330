"""``cxr-diffusion train [--config FILE.yaml] [--any-field VALUE ...]``: fine-tune a base pipeline.

Every field of :class:`hf_cxr_diffusion.training.config.TrainConfig` is a kebab-case flag; values
given on the command line override the YAML file. Flags of diffusers' training examples
(``--pretrained_model_name_or_path``, ``--train_batch_size``, ``--rank``, ...) are accepted too;
the few that have no meaning here stop with the reason (:data:`REFUSED`). Example::

    cxr-diffusion train --config configs/lora-prompt2medimage.yaml \\
        --pretrained-model ./tiny-sd --dataset ./prepared --output-dir runs/lora --max-train-steps 200
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.cli._common import add_config_flags, add_refused_flag, config_values, print_once

#: diffusers training-example flags that have no counterpart here, and why
REFUSED: dict[str, str] = {
    "--random_flip": "a horizontal flip puts the heart on the right (it mimics dextrocardia), so chest X-rays are "
                     "never flipped",
    "--dataloader_num_workers": "images are decoded once into cached latents (or per batch in the training process "
                                "when the VAE trains); there is no DataLoader to parallelise",
    "--push_to_hub": "train writes a local folder; use `cxr-diffusion publish adapter OUTPUT_DIR --repo-id ORG/NAME` "
                     "(it validates the export and runs the data-use guard first)",
    "--hub_model_id": "use `cxr-diffusion publish adapter OUTPUT_DIR --repo-id ORG/NAME`",
    "--hub_token": "use `hf auth login` (or HF_TOKEN) and `cxr-diffusion publish`",
    "--enable_xformers_memory_efficient_attention": "PyTorch's scaled-dot-product attention is used already",
}


class _CenterCrop(argparse.Action):
    """diffusers' ``--center_crop``: what this trainer always does, so the flag only confirms it."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        pass


HELP = "fine-tune Stable Diffusion with any method (LoRA, DoRA, SeLoRA, full, BitFit, DiffFit)"
DESCRIPTION = ("Fine-tune a base pipeline on a prepared dataset. Every option may also be set in --config FILE.yaml; "
               "command-line values win. diffusers' snake_case spellings of the same options are accepted.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hf_cxr_diffusion.training.config import SMOKE_OVERRIDES, TrainConfig, diffusers_flag

    parser.add_argument("--config", type=Path, help="YAML file of training options (e.g. configs/lora-prompt2medimage.yaml)")
    smoke = ", ".join(f"{k}={v}" for k, v in SMOKE_OVERRIDES.items())
    parser.add_argument("--smoke", action="store_true",
                        help=f"check that a preset runs, in seconds on CPU (applied last: {smoke})")
    aliases = {f.name: flag for f in dataclasses.fields(TrainConfig) if (flag := diffusers_flag(f))}
    add_config_flags(parser, TrainConfig, aliases=aliases,
                     overrides={"method_config": {"nargs": "+", "metavar": "KEY=VALUE|{JSON}"}})
    parser.add_argument("--rank", type=int, default=argparse.SUPPRESS,
                        help="LoRA/DoRA rank: diffusers' --rank, the same as --method-config rank=N")
    parser.add_argument("--center_crop", action=_CenterCrop, help="accepted for diffusers compatibility: training "
                        "images are always resized on the short side and centre-cropped")
    for flag, reason in REFUSED.items():
        add_refused_flag(parser, flag, reason)


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's config values, with ``--rank`` folded into ``method_config``."""
    from hf_cxr_diffusion.training.config import TrainConfig, parse_method_config

    values = config_values(args, TrainConfig)
    if getattr(args, "rank", None) is not None:
        values["method_config"] = {**parse_method_config(values.get("method_config")), "rank": args.rank}
    return values


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.training.config import load_config
    from hf_cxr_diffusion.training.trainer import train

    result = train(load_config(args.config, train_overrides(args), smoke=args.smoke), keep_components=False)
    print_once(f"trained {result.method.name} for {result.global_step} steps (final loss {result.final_loss}); outputs in {result.output_dir}")
    return 0
