"""What may go into a Hub export: allow-listed copies, the never-publish patterns, small readers.

Exports are built from an allow-list per kind; :func:`forbidden_files` is the second line of
defence that a validated export holds no training state (``checkpoint-*``, optimizer / RNG /
scaler states written by ``accelerate``), logs or caches.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.errors import UserError

logger = logging.getLogger(__name__)

#: path parts that never belong in a published repo (matched against every part of a relative path)
FORBIDDEN_PATTERNS: tuple[str, ...] = (
    "checkpoint-*",
    "optimizer*",
    "scheduler.bin",
    "scaler.pt",
    "random_states*",
    "custom_checkpoint_*",
    "logs",
    ".cache",
    "__pycache__",
    "*.pyc",
    "events.out.tfevents*",
    ".ipynb_checkpoints",
    "*.tmp",
    ".git",
)


def is_forbidden(rel_path: str | Path) -> bool:
    """Whether any part of ``rel_path`` matches :data:`FORBIDDEN_PATTERNS`."""
    return any(fnmatch.fnmatch(part, pat) for part in Path(rel_path).parts for pat in FORBIDDEN_PATTERNS)


def list_files(root: Path) -> list[str]:
    """Every file under ``root`` as a sorted POSIX path relative to it."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def forbidden_files(root: Path) -> list[str]:
    return [rel for rel in list_files(root) if is_forbidden(rel)]


def copy_file(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    return dst


def copy_tree(src: Path, dst: Path) -> int:
    """Copy the files of ``src`` into ``dst`` except forbidden ones (counted and logged)."""
    skipped = 0
    for rel in list_files(src):
        if is_forbidden(rel):
            skipped += 1
            continue
        copy_file(src / rel, dst / rel)
    if skipped:
        logger.info("left %d training-state/cache file(s) of %s out of the export", skipped, src)
    return skipped


def require_files(src: Path, names: list[str], what: str) -> None:
    """Raise :class:`UserError` naming every file of ``names`` missing from ``src``."""
    missing = [name for name in names if not (src / name).exists()]
    if missing:
        raise UserError(f"{src} is not a {what}: missing {', '.join(missing)}")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UserError(f"{path} does not exist") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from err


def is_hub_id(value: str) -> bool:
    """``ORG/NAME`` that is not a local path (local paths never go into card metadata)."""
    return value.count("/") == 1 and not Path(value).exists() and not value.startswith((".", "/", "~"))


def display_name(value: str) -> str:
    """A hub id as it is; a local path by its last part (cards do not publish local paths)."""
    return value if is_hub_id(value) else Path(value).name or value


#: ``.../models--ORG--NAME/snapshots/<revision>``: a model folder in the Hub cache
_HUB_CACHE_SNAPSHOT = re.compile(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/[^/]+/?$")


def hub_id_of(name_or_path: str) -> str | None:
    """The Hub id of a base model when it is knowable, else None.

    From, in order: a hub id itself; a Hub-cache snapshot path (``models--ORG--NAME/snapshots/<sha>``
    -> ``ORG/NAME``); the ``_name_or_path`` a diffusers pipeline folder records in ``model_index.json``.
    """
    from hf_cxr_diffusion.artefacts import PIPELINE_INDEX_FILE

    if is_hub_id(name_or_path):
        return name_or_path
    match = _HUB_CACHE_SNAPSHOT.search(Path(name_or_path).expanduser().as_posix())
    if match:
        return f"{match.group(1)}/{match.group(2)}"
    index = Path(name_or_path).expanduser() / PIPELINE_INDEX_FILE
    try:
        recorded = json.loads(index.read_text(encoding="utf-8")).get("_name_or_path") if index.is_file() else None
    except (OSError, ValueError, AttributeError):
        recorded = None
    return recorded if isinstance(recorded, str) and recorded != name_or_path and is_hub_id(recorded) else None


def is_local_path(value: str) -> bool:
    """Whether ``value`` names a path of this machine (absolute, ``~``-relative, or an existing relative one)."""
    return value.startswith(("/", "~", "\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", value)) or (
        ("/" in value or "\\" in value) and not is_hub_id(value) and Path(value).exists()
    )


def without_local_paths(value: Any) -> Any:
    """``value`` (JSON-like) with every local path string replaced by :func:`display_name` (its last part):
    exports never carry the export machine's paths."""
    if isinstance(value, dict):
        return {k: without_local_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_local_paths(v) for v in value]
    if isinstance(value, str) and is_local_path(value):
        return Path(value).name or "."
    return value


def copy_json_without_local_paths(src: Path, dst: Path, **replace: Any) -> Path:
    """Copy a JSON file through :func:`without_local_paths` (top-level keys in ``replace`` set first)."""
    from hf_cxr_diffusion.io import write_json_atomic

    data = read_json(src)
    if isinstance(data, dict):
        data.update(replace)
    return write_json_atomic(dst, without_local_paths(data))


def natural_key(path: Path) -> tuple:
    """Sort ``step-2`` before ``step-10``."""
    return tuple(int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path.name))
