"""Flags shared by several subcommands, spelled the same everywhere (kebab-case)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already states one or there is none to state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or default in (None, argparse.SUPPRESS, False, "", [])
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def print_once(text: str) -> None:
    """Print a command's result on the main process only: once per ``accelerate launch`` job, not once per rank."""
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(text)


class _Refused(argparse.Action):
    """A flag users know from elsewhere that this command does not take: stop at parse time, saying why."""

    def __init__(self, option_strings: Sequence[str], dest: str, reason: str, **kwargs) -> None:
        self.reason = reason
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(f"{option_string} is not supported: {self.reason}")


def add_refused_flag(parser: argparse.ArgumentParser, flag: str, reason: str) -> None:
    """``flag`` (e.g. diffusers' ``--push_to_hub``) stops the command with ``reason``; hidden from ``--help``."""
    parser.add_argument(flag, action=_Refused, reason=reason, help=argparse.SUPPRESS)


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


def finite_float(text: str) -> float:
    """``argparse`` type of a float option: ``nan`` and ``inf`` are refused when the command line is parsed."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _scalar_type(annotation: Any) -> Any:
    """``int | None`` -> int, ``list[float]`` -> list, ``str`` -> str (the first non-None member of a union)."""
    members = [a for a in typing.get_args(annotation) if a is not type(None)] if typing.get_origin(annotation) in (
        typing.Union, types.UnionType) else [annotation]
    return members[0] if members else str


def _convert(kind: Any) -> Callable[[str], Any]:
    return {int: int, float: finite_float}.get(kind, str)


def _separated(item: Callable[[str], Any], sep: str) -> Callable[[str], list]:
    def parse(text: str) -> list:
        return [item(part.strip()) for part in text.split(sep) if part.strip()]
    parse.__name__ = f"{getattr(item, '__name__', 'value')} list"
    return parse


def flag_kwargs(annotation: Any, meta: Mapping[str, Any], default: Any) -> dict[str, Any]:
    """``add_argument`` keywords of one config field, from its type annotation and ``metadata``.

    ``bool`` -> ``--x/--no-x``; ``list[T]`` -> several values, or one ``sep``-separated value when the
    field's metadata has ``sep``; ``int`` / ``float`` (finite) / ``str`` otherwise; metadata ``choices``,
    ``required``, ``metavar`` and ``nargs`` pass through. Values not given stay absent from the namespace
    (``argparse.SUPPRESS``), so a YAML file or the dataclass default applies.
    """
    help_text = str(meta.get("help", ""))
    if default not in (None, "", [], {}, dataclasses.MISSING) and not meta.get("required"):
        help_text += f" (default: {','.join(map(str, default)) if isinstance(default, (list, tuple)) else default})"
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
    for key in ("choices", "required", "metavar", "nargs"):
        if key in meta:
            kwargs[key] = meta[key]
    kind = _scalar_type(annotation)
    origin = typing.get_origin(kind) or kind
    if origin is bool:
        return {**kwargs, "action": argparse.BooleanOptionalAction}
    if origin in (list, tuple):
        item = _convert((typing.get_args(kind) or (str,))[0])
        if "sep" in meta:
            return {**kwargs, "type": _separated(item, meta["sep"])}
        return {"nargs": "*", **kwargs, "type": item}
    return {**kwargs, "type": _convert(origin)}


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type, *, exclude: Collection[str] = (),
                     overrides: Mapping[str, Mapping[str, Any]] | None = None,
                     aliases: Mapping[str, str] | None = None) -> None:
    """One kebab-case flag per field of the dataclass ``config_cls`` (``TrainConfig``, ``PrepareConfig``).

    Args:
        parser: the subcommand's parser.
        config_cls: a dataclass whose fields carry ``metadata={"help": ...}`` (and optionally ``choices``,
            ``required``, ``sep``, ``metavar``, ``nargs``).
        exclude: fields the command adds itself (e.g. ``output_dir`` through :func:`add_output_dir`).
        overrides: per-field ``add_argument`` keywords that replace the derived ones.
        aliases: per-field second spelling (e.g. diffusers' ``--train_batch_size``), named in the help text and
            storing into the same field; a boolean alias is a plain switch like diffusers' ``store_true`` flags.
    """
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        if field.name in exclude:
            continue
        default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
        kwargs = flag_kwargs(hints[field.name], field.metadata, default)
        kwargs.update((overrides or {}).get(field.name, {}))
        flag = f"--{field.name.replace('_', '-')}"
        alias = (aliases or {}).get(field.name)
        alias = alias if alias != flag else None  # one-word names (--seed) are spelled alike
        if alias:
            kwargs["help"] = f"{kwargs['help']} [also {alias}]"
        parser.add_argument(flag, dest=field.name, **kwargs)
        if alias:
            alias_kwargs = {**kwargs, "help": argparse.SUPPRESS, "required": False}
            if kwargs.get("action") is argparse.BooleanOptionalAction:
                alias_kwargs.update(action="store_const", const=True)
            parser.add_argument(alias, dest=field.name, **alias_kwargs)


def config_values(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """The fields of ``config_cls`` given on the command line (absent ones are left to the config's defaults)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return {k: v for k, v in vars(args).items() if k in names}
