"""``cxr-diffusion demo [--out DIR]``: the whole job offline on the embedded tiny default."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_cxr_diffusion.cli._common import add_command, add_seed


def add_parser(subparsers) -> None:
    parser = add_command(subparsers, "demo", run, help="run the whole job offline on the tiny model and phantoms")
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    parser.add_argument("--train-steps", type=int, default=200, help="LoRA fine-tuning steps (default 200)")
    add_seed(parser)


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.demo import DISCLAIMER, run_demo

    results = run_demo(args.out, seed=args.seed, train_steps=args.train_steps)
    print(json.dumps({stage: info for stage, info in results.items()}, indent=2, default=str))
    print(DISCLAIMER)
    return 0
