"""Resumable ``checkpoint-<step>`` folders: atomic, pruned to a total limit, checked on resume.

A checkpoint holds only what a resume needs::

    checkpoint-<step>/trainable.safetensors   method.trainable_state_dict (only what trains)
    checkpoint-<step>/optimizer.pt            optimizer state + parameter names per group
    checkpoint-<step>/scheduler.pt            lr scheduler state
    checkpoint-<step>/ema.pt                  EMA shadow weights (with --use-ema)
    checkpoint-<step>/rng.pt                  global RNG states of every process
    checkpoint-<step>/trainer_state.json      step, epoch, next batch, losses, method, model fingerprint

The folder is built under a temporary name and renamed when complete, so a crash or a full disk
while saving leaves the previous checkpoint untouched and never a half-written one.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import atomic_path

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
_PATTERN = re.compile(r"^checkpoint-(\d+)$")


class CheckpointWriteError(UserError):
    """Saving a checkpoint failed (e.g. disk full); the previous checkpoint is intact."""


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := _PATTERN.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(spec: str | None, output_dir: str | Path) -> Path | None:
    """``latest`` -> newest checkpoint in ``output_dir`` (None if there is none); a path -> that folder."""
    if spec is None:
        return None
    if spec == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.warning("--resume-from-checkpoint latest: no checkpoint in %s; starting a new run", output_dir)
            return None
        return found[-1]
    path = Path(spec)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / spec
    if not (path / STATE_FILE).is_file():
        raise UserError(f"--resume-from-checkpoint {spec}: {path} is not a checkpoint folder ({STATE_FILE} missing)")
    return path


def save_checkpoint(output_dir: str | Path, step: int, write: Callable[[Path], None], total_limit: int | None = None) -> Path:
    """Build ``checkpoint-<step>`` with ``write(tmp_dir)``, rename it into place, then prune old ones."""
    final = Path(output_dir) / f"checkpoint-{step}"
    previous = list_checkpoints(output_dir)
    try:
        with atomic_path(final) as tmp:
            tmp.mkdir()
            write(tmp)
    except OSError as err:
        kept = previous[-1].name if previous else "none"
        reason = "disk full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        raise CheckpointWriteError(
            f"could not write {final} ({reason}); previous checkpoint {kept} is intact. "
            "Free space and resume with --resume-from-checkpoint latest"
        ) from err
    if total_limit is not None and total_limit > 0:
        for old in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(old, ignore_errors=True)
            logger.info("removed old checkpoint %s (--checkpoints-total-limit %d)", old.name, total_limit)
    return final


def read_state(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))


def check_compatible(saved: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
    """Same method, method config and base-model architecture, or a :class:`UserError` saying what differs."""
    for key, label in (("method", "method"), ("method_config", "method config"), ("model_fingerprint", "base model architecture")):
        if saved.get(key) != expected.get(key):
            raise UserError(
                f"checkpoint {path} is incompatible with this run: {label} differs "
                f"(checkpoint: {saved.get(key)!r}, this run: {expected.get(key)!r}); "
                "resume with the same --method / --method-config / --pretrained-model or start a new --output-dir"
            )


def optimizer_state(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, Any]:
    """Optimizer state plus the parameter names of every group (``names``: id(param) -> name)."""
    return {
        "state_dict": optimizer.state_dict(),
        "group_names": [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups],
    }


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any], params: dict[str, torch.nn.Parameter]) -> None:
    """Restore, regrouping the parameters as saved when methods added groups during training."""
    current = saved["group_names"]
    missing = sorted({n for g in current for n in g} - set(params))
    if missing:
        raise UserError(f"checkpoint optimizer refers to parameters this model does not have: {missing[:5]}")
    groups = saved["state_dict"]["param_groups"]
    optimizer.param_groups.clear()
    optimizer.state.clear()
    for names, group in zip(current, groups):
        optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": [params[n] for n in names]})
    optimizer.load_state_dict(saved["state_dict"])
