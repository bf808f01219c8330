"""``cxr-diffusion <command>``: one thin CLI over the Python API.

Each subcommand lives in its own module of this package exposing ``HELP`` (its line in
``cxr-diffusion --help``), optionally ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int``.
Adding a command is one new module plus one line in ``COMMANDS``. The command line fills in the
arguments of the chosen subcommand only, so ``cxr-diffusion --help`` and every command's start-up
import no other command's dependencies (``add_arguments`` may import config classes; the modules' top
levels stay light).
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

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
    "presets",
    "generate",
    "evaluate",
    "classify",
    "publish",
    "export_lora",
    "study",
)


class _LazySubcommands(argparse._SubParsersAction):
    """Sub-parsers whose arguments are added when their command is chosen (``pending`` holds the fillers)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pending: dict[str, Callable[[], None]] = {}

    def fill(self, name: str) -> None:
        if (add_arguments := self.pending.pop(name, None)) is not None:
            add_arguments()

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        self.fill(values[0])
        super().__call__(parser, namespace, values, option_string)


def build_parser(lazy: bool = False) -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per module in :data:`COMMANDS`.

    With ``lazy`` a sub-parser gets its arguments only when its command is parsed (what :func:`main` does);
    otherwise all are complete on return (for introspection).
    """
    from hf_cxr_diffusion import __version__
    from hf_cxr_diffusion.cli._common import DefaultsHelpFormatter

    parser = argparse.ArgumentParser(
        prog="cxr-diffusion",
        description="Fine-tune Stable Diffusion on chest X-rays, generate and measure synthetic data.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True, action=_LazySubcommands)
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        command = name.replace("_", "-")
        sub = subparsers.add_parser(command, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
                                    formatter_class=DefaultsHelpFormatter)
        sub.set_defaults(run=module.run)
        subparsers.pending[command] = functools.partial(module.add_arguments, sub)
        if not lazy:
            subparsers.fill(command)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that an unknown flag is reported with the usage of its subcommand."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        sub = next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


class _EmittedElsewhere(logging.Filter):
    """Drop a record at the root handler when a logger on its way up has its own handler and printed it already.

    ``huggingface_hub`` and ``datasets`` attach a stderr handler to their library logger and still propagate,
    so with a root handler every one of their warnings would print twice.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger is not logging.root:
            if any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
                return False
            if not logger.propagate:
                break
            logger = logger.parent
        return True


def configure_logging(verbose: int) -> None:
    """A stderr root handler at INFO (DEBUG with -v) printing each record once; kept as is if the host set one up."""
    if logging.root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_EmittedElsewhere())
    logging.root.addHandler(handler)
    logging.root.setLevel(max(logging.WARNING - 10 * (1 + verbose), logging.DEBUG))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cxr-diffusion`` console script."""
    args = parse_args(build_parser(lazy=True), argv)
    configure_logging(args.verbose)
    try:
        return int(args.run(args) or 0)
    except UserError as err:
        print(f"cxr-diffusion {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cxr-diffusion {args.command}: interrupted", file=sys.stderr)
        return 130


def console_main() -> int:
    """The ``cxr-diffusion`` console script: :func:`main`, then ``gc.freeze()`` as the process's last act.

    The interpreter's exit otherwise walks the 0.5 M objects torch, diffusers and transformers create (1.3 s of
    a 14 s tiny training run, the same for diffusers' own example); frozen, they are left to the OS. Everything
    a command writes is closed when it returns (context managers, atomic renames; logging flushes at exit).
    :func:`main` does not freeze: it serves long-lived processes (tests, notebooks) too.
    """
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console_main())
