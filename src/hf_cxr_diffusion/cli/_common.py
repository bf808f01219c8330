"""Flags shared by several subcommands, spelled the same everywhere (kebab-case)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_command(subparsers, name: str, run, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Register a subcommand whose handler is ``run(args) -> int``."""
    parser = subparsers.add_parser(name, help=help, description=description or help)
    parser.set_defaults(run=run)
    return parser


def add_seed(parser: argparse.ArgumentParser, default: int = 0) -> None:
    parser.add_argument("--seed", type=int, default=default, help=f"random seed (default {default})")


def add_resolution(parser: argparse.ArgumentParser, default: int = 64) -> None:
    parser.add_argument("--resolution", type=int, default=default, help=f"image side in pixels (default {default})")


def add_pretrained_model(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--pretrained-model",
        required=required,
        help="diffusers pipeline folder or hub id (e.g. runwayml/stable-diffusion-v1-5)",
    )


def add_out_dir(parser: argparse.ArgumentParser, flag: str = "--out", required: bool = True) -> None:
    parser.add_argument(flag, type=Path, required=required, help="output folder")
