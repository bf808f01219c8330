"""Filesystem helpers shared by every stage: checked output folders and atomic writes.

Nothing we write may be lost half-way: files are written to a temporary sibling and renamed
into place (``os.replace`` is atomic on POSIX), folders are built under a temporary name and
renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``path``; on success move it to ``path`` atomically.

    Works for a file or a folder (the caller creates whichever it needs at the yielded path).
    On error the temporary is removed and ``path`` is untouched. Temporaries are named
    ``.<name>.<pid>.<random>.tmp``, so a killed writer's leftovers are easy to find and clean.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            trash = final.with_name(f".{final.name}.{os.getpid()}.old.tmp")
            os.replace(final, trash)
            os.replace(tmp, final)
            _remove(trash)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented, key-sorted JSON atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
