"""``cxr-diffusion demo [--output-dir DIR]``: the whole job offline on the shipped phantom foundation."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from hf_cxr_diffusion.cli._common import add_output_dir


HELP = "fine-tune the shipped phantom base on phantoms, generate, evaluate and export, offline"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hf_cxr_diffusion.demo import DemoConfig

    add_output_dir(parser, required=False, help="output folder (default demo_output)", deprecated=["--out"])
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --output-dir")
    for f in dataclasses.fields(DemoConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(f.default), default=f.default,
                            help=f"{f.metadata['help']} (default {f.default})")


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.demo import DISCLAIMER, DemoConfig, run_demo

    config = DemoConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig)})
    results = run_demo(args.output_dir or Path("demo_output"), config, overwrite=args.overwrite)
    print(json.dumps(results, indent=2, default=str))
    print(DISCLAIMER)
    return 0
