"""Filesystem helpers shared by every stage: checked output folders and atomic writes.

Nothing we write may be lost half-way: files are written to a temporary sibling and renamed
into place (``os.replace`` is atomic on POSIX), folders are built under a temporary name and
renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.errors import UserError


def ensure_output_dir(path: str | os.PathLike, *, must_be_empty: bool = False) -> Path:
    """Create ``path`` if needed and check it is a writable folder; raise :class:`UserError` if not."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output folder {out}: {err.strerror}; choose a writable --out") from err
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"output folder {out} is not writable; choose a writable --out")
    if must_be_empty and any(out.iterdir()):
        raise UserError(f"output folder {out} is not empty; choose an empty --out or pass --overwrite")
    return out


def _relation(a: Path, b: Path) -> str | None:
    """How resolved folder ``a`` sits relative to ``b``: "equal to", "inside", "above" or ``None`` (disjoint)."""
    if a == b:
        return "equal to"
    if a.is_relative_to(b):
        return "inside"
    if b.is_relative_to(a):
        return "above"
    return None


def check_output_location(output_dir: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None], *,
                          flag: str = "--output-dir") -> Path:
    """Refuse an output folder equal to, inside or above any input folder, or the current folder or above it.

    Every stage calls this before writing, so that no ``--overwrite`` can ever delete a user's inputs.
    ``inputs`` maps the flag of each input (``"--data-dir"``) to its path; entries that are ``None`` or do
    not exist on disk (hub ids) are ignored. Paths are compared after resolving symlinks.
    Returns the output folder as given.
    """
    out = Path(output_dir).expanduser()
    resolved = out.resolve()
    for name, value in inputs.items():
        if value is None or not Path(value).expanduser().exists():
            continue
        relation = _relation(resolved, Path(value).expanduser().resolve())
        if relation is not None:
            raise UserError(f"{flag} {out} is {relation} the input {name} {value}; write the output to a folder "
                            "outside every input (an --overwrite there could delete your inputs)")
    if _relation(resolved, Path.cwd().resolve()) in ("equal to", "above"):
        raise UserError(f"{flag} {out} is the current folder or above it; choose a new sub-folder for the output")
    return out


def check_replaceable(folder: str | os.PathLike, owned: Collection[str], *, what: str, flag: str = "--output-dir") -> Path:
    """Before ``--overwrite`` replaces ``folder``: refuse if it holds any entry not named in ``owned``.

    ``owned`` are the top-level names the writer of ``what`` (e.g. "a prepared dataset") creates; anything
    else means the folder is not (only) that writer's work, and nothing is deleted.
    """
    path = Path(folder)
    if not path.is_dir():
        return path
    foreign = sorted(p.name for p in path.iterdir() if p.name not in owned)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        entries = "1 entry that is" if len(foreign) == 1 else f"{len(foreign)} entries that are"
        raise UserError(f"{flag} {path} holds {entries} not {what} ({shown}); --overwrite only replaces {what}: "
                        f"choose another {flag}")
    return path


#: ``.<entry>.<pid>.<8 hex>.tmp`` (being written) or ``.<entry>.<pid>.old.tmp`` (being replaced), see :func:`atomic_path`
_TEMPORARY = re.compile(r"^\.(?P<entry>.+)\.(?P<pid>\d+)\.(?:[0-9a-f]{8}|old)\.tmp$")


def temporary_of(name: str) -> tuple[str, int] | None:
    """``(entry, writer PID)`` when ``name`` is a temporary that :func:`atomic_path` makes, else None."""
    match = _TEMPORARY.match(name)
    return (match["entry"], int(match["pid"])) if match else None


def temporaries_of(folder: str | os.PathLike, names: Collection[str]) -> list[str]:
    """The hidden temporaries :func:`atomic_path` left in ``folder`` for entries named ``names`` (a killed write)."""
    path = Path(folder)
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir()
                  if p.name.endswith(".tmp") and any(p.name.startswith(f".{name}.") for name in names))


def remove_entry(path: Path) -> None:
    """Delete a file, a symlink or a folder tree (missing is fine)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden temporary beside ``path``, named so that :func:`temporary_of` recognises it."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``path``; on success move it to ``path`` atomically.

    Works for a file or a folder (the caller creates whichever it needs at the yielded path).
    On error the temporary is removed and ``path`` is untouched. Temporaries are named
    ``.<name>.<pid>.<random>.tmp``, so a killed writer's leftovers are easy to find and clean.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            trash = final.with_name(f".{final.name}.{os.getpid()}.old.tmp")
            os.replace(final, trash)
            os.replace(tmp, final)
            remove_entry(trash)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists() or tmp.is_symlink():
            remove_entry(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented, key-sorted JSON atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
