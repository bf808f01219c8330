"""Flags shared by several subcommands, spelled the same everywhere (kebab-case)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


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


class _DeprecatedAlias(argparse.Action):
    """Store like the flag it stands for, and say once that the old spelling is deprecated."""

    def __init__(self, option_strings: Sequence[str], dest: str, new_flag: str, **kwargs) -> None:
        self.new_flag = new_flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        logger.warning("%s is deprecated and will be removed in the next release; use %s", option_string, self.new_flag)
        setattr(namespace, self.dest, values)


def add_deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs) -> None:
    """``old`` keeps working for one release, storing into ``dest`` like ``new``, with a warning."""
    parser.add_argument(old, dest=dest, action=_DeprecatedAlias, new_flag=new, help=argparse.SUPPRESS, **kwargs)


def add_output_dir(
    parser: argparse.ArgumentParser, *, required: bool = True, help: str = "output folder", deprecated: Sequence[str] = ()
) -> None:
    """``--output-dir`` (the one name for where a command writes), plus deprecated spellings such as ``--out``."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--output-dir", type=Path, dest="output_dir", help=help)
    for old in deprecated:
        add_deprecated_alias(group, old, "--output-dir", "output_dir", type=Path)


def add_dataset(
    parser: argparse.ArgumentParser, *, required: bool = True, help: str = "prepared dataset folder or hub id",
    deprecated: Sequence[str] = (),
) -> None:
    """``--dataset`` (the one name for a command's input dataset), plus deprecated spellings such as ``--real``."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--dataset", dest="dataset", help=help)
    for old in deprecated:
        add_deprecated_alias(group, old, "--dataset", "dataset")


def add_out_dir(parser: argparse.ArgumentParser, flag: str = "--out", required: bool = True) -> None:
    """Deprecated spelling of :func:`add_output_dir`; remove once every command uses ``--output-dir``."""
    parser.add_argument(flag, type=Path, required=required, help="output folder")
