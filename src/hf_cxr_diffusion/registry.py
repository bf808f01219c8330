"""The one lazy registry helper: ``name -> "module:Attr"`` strings, imported on first use.

Every pluggable family (fine-tuning methods, corpora, schedulers, metrics) registers its members
with ONE line each, as a string, so that listing the names (``--help``, error messages) imports
nothing heavy and adding a member is one new module plus one registry line::

    METHODS = Registry("fine-tuning method", {"lora": ".lora:LoRA"}, package="hf_cxr_diffusion.methods")
    METHODS["lora"]            # imports hf_cxr_diffusion.methods.lora, returns LoRA
    METHODS["lorra"]           # UserError: unknown fine-tuning method 'lorra' (did you mean 'lora'?); valid names: ...

A leading dot in a module path is relative to ``package`` (``importlib.import_module``'s rule).
The module stays torch-free.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from hf_cxr_diffusion.errors import UserError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A read-only mapping ``name -> object`` whose objects are imported from ``"module:Attr"`` strings on first use.

    Args:
        kind: what one entry is, for error messages (``"fine-tuning method"``, ``"corpus"``).
        entries: ``name -> "module:Attr"``; ``module`` may start with ``.`` (relative to ``package``).
        package: anchor of relative module paths (usually the registering package's ``__name__``).
        option: the user-facing option that takes these names (``"--method"``), named in errors.
        normalize: maps a user-given name to its registry key (e.g. lower-case, ``-`` to ``_``).
    """

    def __init__(
        self,
        kind: str,
        entries: Mapping[str, str],
        *,
        package: str | None = None,
        option: str | None = None,
        normalize: Callable[[str], str] | None = None,
    ) -> None:
        for name, target in entries.items():
            module, sep, attr = target.partition(":")
            if not (module and sep and attr):
                raise ValueError(f"registry entry {name!r} -> {target!r} is not 'module:Attr'")
        self.kind = kind
        self.option = option
        self._entries = dict(entries)
        self._package = package
        self._normalize = normalize or (lambda name: name)
        self._loaded: dict[str, T] = {}

    def key(self, name: str) -> str:
        """The registry key of user-given ``name``; :class:`UserError` listing the valid names if unknown."""
        key = self._normalize(name)
        if key in self._entries:
            return key
        close = difflib.get_close_matches(key, self._entries, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        where = f"{self.option} " if self.option else ""
        raise UserError(f"unknown {self.kind} {name!r}{hint}; {where}valid names: {', '.join(sorted(self._entries))}")

    def __getitem__(self, name: str) -> T:
        key = self.key(name)
        if key not in self._loaded:
            module, _, attr = self._entries[key].partition(":")
            self._loaded[key] = getattr(importlib.import_module(module, self._package), attr)
        return self._loaded[key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._normalize(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self._entries!r})"
