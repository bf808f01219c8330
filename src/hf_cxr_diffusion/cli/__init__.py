"""``cxr-diffusion <command>``: one thin CLI over the Python API.

Each subcommand lives in its own module of this package exposing ``add_parser(subparsers)``
and ``run(args) -> int``. Adding a command is one new module plus one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from hf_cxr_diffusion.errors import UserError

#: subcommand modules, in the order ``--help`` lists them
COMMANDS: tuple[str, ...] = (
    "demo",
    "make_tiny_model",
    "make_phantoms",
    "pretrain_base",
    "pretrain_features",
    "prepare",
    "train",
    "generate",
    "evaluate",
    "classify",
    "publish",
    "study",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per module in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="cxr-diffusion",
        description="Fine-tune Stable Diffusion on chest X-rays, generate and measure synthetic data.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cxr-diffusion`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * (1 + args.verbose)
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except UserError as err:
        print(f"cxr-diffusion {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cxr-diffusion {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
