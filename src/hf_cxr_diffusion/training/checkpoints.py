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

from hf_cxr_diffusion.artefacts import CHECKPOINT_PREFIX
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import atomic_path
from hf_cxr_diffusion.methods.base import FineTuningMethod, trainable_named_parameters
from hf_cxr_diffusion.training.loss import NonFiniteLossError
from hf_cxr_diffusion.training.rng import capture_rng_state, restore_rng_state
from hf_cxr_diffusion.training.state import TrainerState

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
#: the EMA shadow weights of a checkpoint (with --use-ema)
EMA_FILE = "ema.pt"
_PATTERN = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")


class CheckpointWriteError(UserError):
    """Saving a checkpoint failed (e.g. disk full); the previous checkpoint is intact."""


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of optimizer step ``step`` lives in ``output_dir``."""
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"


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
    final = checkpoint_dir(output_dir, step)
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


def resume_identity(method: FineTuningMethod, model_fingerprint: str) -> dict[str, Any]:
    """What a checkpoint must share with a run that resumes it (stored in :data:`STATE_FILE`)."""
    return {"method": method.name, "method_config": json.loads(json.dumps(method.config.to_dict(), default=str)),
            "model_fingerprint": model_fingerprint}


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


class Checkpointer:
    """Writes and restores the ``checkpoint-<step>`` folders of one run (every process calls; rank 0 writes).

    Args:
        output_dir: the run's output folder.
        method: the fine-tuning method (what trains, and how its tensors are stored).
        components: the ``SDComponents`` being trained.
        identity: what must match for a resume (:func:`check_compatible`); stored in :data:`STATE_FILE`.
        accelerator: the run's ``accelerate.Accelerator`` (rank, barriers, RNG-state gathering).
        total_limit: keep at most this many checkpoints (None: all).
    """

    def __init__(self, output_dir: Path, method: FineTuningMethod, components: Any, identity: dict[str, Any],
                 accelerator: Any, total_limit: int | None) -> None:
        self.out, self.method, self.components, self.identity = Path(output_dir), method, components, identity
        self.acc, self.total_limit = accelerator, total_limit

    def last_name(self) -> str:
        """Name of the newest complete checkpoint, or ``"none"``."""
        found = list_checkpoints(self.out)
        return found[-1].name if found else "none"

    def save(self, state: TrainerState, optimizer: torch.optim.Optimizer, lr_scheduler: Any, ema: Any | None) -> Path | None:
        """Write ``checkpoint-<global_step>`` (rank 0) and return its path there (None on other ranks).

        Raises :class:`NonFiniteLossError` (saving nothing) when a trainable tensor is NaN/inf.
        """
        from accelerate.utils import gather_object
        from safetensors.torch import save_file

        bad = [n for n, p in trainable_named_parameters(self.components).items() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(
                f"trainable tensor(s) {bad[:3]} became NaN/inf at step {state.global_step}; stopped without saving. "
                f"Last good checkpoint: {self.last_name()}; lower --learning-rate or check the method")
        world = self.acc.num_processes
        rng_states = gather_object([capture_rng_state()]) if world > 1 else [capture_rng_state()]
        path = None
        if self.acc.is_main_process:
            names = {id(p): n for n, p in trainable_named_parameters(self.components).items()}

            def write(tmp: Path) -> None:
                trainable = {k: v.detach().to("cpu").contiguous() for k, v in self.method.trainable_state_dict(self.components).items()}
                save_file(trainable, str(tmp / "trainable.safetensors"))
                torch.save(optimizer_state(optimizer, names), tmp / "optimizer.pt")
                torch.save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
                if ema is not None:
                    torch.save(ema.state_dict(), tmp / EMA_FILE)
                torch.save(rng_states, tmp / "rng.pt")
                (tmp / STATE_FILE).write_text(json.dumps({**state.to_json(), **self.identity}, indent=1), encoding="utf-8")

            path = save_checkpoint(self.out, state.global_step, write, self.total_limit)
            logger.info("saved %s", path)
        self.acc.wait_for_everyone()
        return path

    def load_trainable(self, path: Path) -> TrainerState:
        """Check compatibility and restore the trainable tensors (call BEFORE building the optimizer)."""
        from safetensors.torch import load_file

        saved = read_state(path)
        check_compatible(saved, self.identity, path)
        try:
            self.method.load_trainable_state_dict(self.components, load_file(str(path / "trainable.safetensors")))
        except (KeyError, RuntimeError) as err:
            raise UserError(f"checkpoint {path} does not fit this model/method: {err}") from err
        return TrainerState.from_json(saved)

    def load_rest(self, path: Path, optimizer: torch.optim.Optimizer, lr_scheduler: Any, ema: Any | None) -> None:
        """Restore optimizer, scheduler, EMA and this process's global RNG states."""
        named = trainable_named_parameters(self.components)
        load_optimizer_state(optimizer, torch.load(path / "optimizer.pt", weights_only=False), named)
        lr_scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        if ema is not None and (path / EMA_FILE).is_file():
            ema.load_state_dict(torch.load(path / EMA_FILE, weights_only=False))
        rng = torch.load(path / "rng.pt", weights_only=False)
        world, rank = self.acc.num_processes, self.acc.process_index
        if len(rng) != world:
            logger.warning("checkpoint has RNG states of %d process(es), this run has %d: dropout streams differ", len(rng), world)
        restore_rng_state(rng[rank % len(rng)])
