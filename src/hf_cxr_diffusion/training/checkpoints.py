"""Resumable ``checkpoint-<step>`` folders: atomic, pruned to a total limit, checked on resume.

A checkpoint holds only what a resume needs::

    checkpoint-<step>/trainable.safetensors     method.trainable_state_dict (only what trains)
    checkpoint-<step>/optimizer.{safetensors,json}  optimizer state + parameter names per group
    checkpoint-<step>/scheduler.{safetensors,json}  lr scheduler state
    checkpoint-<step>/ema.{safetensors,json}        EMA shadow weights (with --use-ema)
    checkpoint-<step>/rng.{safetensors,json}        global RNG states of every process
    checkpoint-<step>/trainer_state.json        step, epoch, next batch, losses, run identity and config
    checkpoint-<step>/checkpoint_index.json     sha256 of every file above, written last

Nothing is pickled: every state is split into its tensors (a safetensors file) and the structure
around them (JSON, :func:`.state_files.save_tree`), so resuming a checkpoint from any path can never run code.
The folder is built under a temporary name and renamed when complete, so a crash or a full disk
while saving leaves the previous checkpoint untouched and never a half-written one; the index
makes a checkpoint damaged later (truncated copy, bit rot) detectable, and ``latest`` then
resumes from the newest intact one (:func:`resolve_resume`). A checkpoint without an index (saved
before the index existed) is resumed when its state files are all there and readable, with a warning.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from hf_cxr_diffusion.artefacts import CHECKPOINT_PREFIX
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hashing import sha256_file
from hf_cxr_diffusion.io import atomic_path, temporary_of
from hf_cxr_diffusion.methods.base import FineTuningMethod, trainable_named_parameters
from hf_cxr_diffusion.training.loss import NonFiniteLossError
from hf_cxr_diffusion.training.rng import capture_rng_state, restore_rng_state
from hf_cxr_diffusion.training.state import TrainerState
from hf_cxr_diffusion.training.state_files import TENSORS_SUFFIX, load_tree, save_tree, tree_files

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
#: sha256 of every other file of a checkpoint; written last, so a checkpoint without it is incomplete
INDEX_FILE = "checkpoint_index.json"
TRAINABLE_FILE = "trainable.safetensors"
#: the EMA shadow weights of a checkpoint (with --use-ema), a :func:`save_tree` name (read with :func:`read_ema_shadow`)
EMA_FILE = "ema"
OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE = "optimizer", "scheduler", "rng"
_PATTERN = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")


class CheckpointWriteError(UserError):
    """Saving a checkpoint failed (e.g. disk full); the previous checkpoint is intact."""


def read_ema_shadow(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The EMA shadow weights (parameter name -> fp32 tensor) of a checkpoint saved with ``--use-ema``."""
    return load_tree(Path(checkpoint), EMA_FILE)["shadow"]


# --- the folders


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of optimizer step ``step`` lives in ``output_dir``."""
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"


def is_owned_entry(name: str) -> bool:
    """Whether a top-level entry of an output folder is a checkpoint or a checkpoint's temporary (a killed save)."""
    temporary = temporary_of(name)
    return bool(_PATTERN.match(temporary[0] if temporary else name))


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := _PATTERN.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def verify_checkpoint(path: str | Path) -> str | None:
    """What is wrong with checkpoint ``path`` (a file missing or changed), or None if it is intact. One without an
    index (saved before the index existed) is checked for complete, readable state files only, with a warning."""
    path = Path(path)
    try:
        index = json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))
        files = dict(index["files"])
    except FileNotFoundError:
        return _verify_unindexed(path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{INDEX_FILE} is unreadable ({type(err).__name__})"
    for name, digest in sorted(files.items()):
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if sha256_file(file) != digest:
            return f"{name} does not match its sha256 in {INDEX_FILE} (truncated or modified)"
    return None


#: checkpoints without an index already warned about (once per process each)
_UNINDEXED_WARNED: set[Path] = set()


def _verify_unindexed(path: Path) -> str | None:
    """A checkpoint without :data:`INDEX_FILE`: one of the pickle format (refused, never read), or one saved before
    the index was written (accepted, with one warning, when every state file is there and parses)."""
    from safetensors import SafetensorError, safe_open

    pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".pt", ".pth", ".bin", ".pkl"))
    if pickled:
        return f"{INDEX_FILE} is missing and it holds pickled state ({', '.join(pickled)}), which is never loaded"
    names = [TRAINABLE_FILE, STATE_FILE, *[f for n in (OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE) for f in tree_files(n)],
             *[f for f in tree_files(EMA_FILE) if (path / f).exists()]]
    for name in names:
        try:
            if name.endswith(TENSORS_SUFFIX):
                with safe_open(str(path / name), "pt") as handle:
                    for key in handle.keys():  # reads every tensor: a truncated file fails here
                        handle.get_tensor(key)
            else:
                json.loads((path / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"{INDEX_FILE} and {name} are missing (an incomplete copy)"
        except (SafetensorError, OSError, ValueError) as err:
            return f"{INDEX_FILE} is missing and {name} is unreadable ({type(err).__name__})"
    if path.resolve() not in _UNINDEXED_WARNED:
        _UNINDEXED_WARNED.add(path.resolve())
        logger.warning("checkpoint %s has no %s (saved before checkpoints carried one): its state files are all there and "
                       "readable, but cannot be checked against their sha256", path, INDEX_FILE)
    return None


def resolve_resume(spec: str | None, output_dir: str | Path, run_id: str | None = None) -> Path | None:
    """``latest`` -> newest intact checkpoint of run ``run_id`` in ``output_dir`` (None if there is none);
    a path -> that folder.

    ``latest`` skips damaged checkpoints (:func:`verify_checkpoint`) and, when ``run_id`` is given,
    those another run wrote, with a warning naming each; an explicit path that does not verify is a
    :class:`UserError`.
    """
    if spec is None:
        return None
    if spec == "latest":
        for path in reversed(list_checkpoints(output_dir)):
            problem = verify_checkpoint(path)
            if problem is None and run_id is not None and _run_of(path) != run_id:
                problem = "written by another run"
            if problem is None:
                return path
            logger.warning("--resume-from-checkpoint latest: skipping checkpoint %s: %s", path.name, problem)
        logger.warning("--resume-from-checkpoint latest: no intact checkpoint of this run in %s; starting a new run", output_dir)
        return None
    path = Path(spec)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / spec
    if not (path / STATE_FILE).is_file():
        raise UserError(f"--resume-from-checkpoint {spec}: {path} is not a checkpoint folder ({STATE_FILE} missing)")
    problem = verify_checkpoint(path)
    if problem is not None:
        raise UserError(f"--resume-from-checkpoint {spec}: checkpoint {path} is damaged: {problem}; "
                        "resume from another checkpoint (or 'latest', which skips damaged ones)")
    return path


def write_failure(err: OSError, target: str | Path, kept: str) -> CheckpointWriteError:
    """The one-line error for a failed write of ``target`` (ENOSPC: "disk full"), naming the intact checkpoint ``kept``."""
    if err.errno == errno.ENOSPC:
        return CheckpointWriteError(f"disk full while writing {target}; the previous checkpoint {kept} is intact. "
                                    "Free space and resume with --resume-from-checkpoint latest")
    return CheckpointWriteError(f"could not write {target} ({err.strerror or err}); the previous checkpoint {kept} is "
                                "intact. Fix the cause and resume with --resume-from-checkpoint latest")


def save_checkpoint(output_dir: str | Path, step: int, files: Mapping[str, Callable[[Path], None]],
                    total_limit: int | None = None, prunable: Callable[[Path], bool] = lambda _: True) -> Path:
    """Build ``checkpoint-<step>``: ``files[name](tmp_dir)`` writes file ``name`` (and its companions); then the sha256
    index (:data:`INDEX_FILE`), the rename into place, and pruning of the oldest ``prunable`` checkpoints
    beyond ``total_limit``."""
    final = checkpoint_dir(output_dir, step)
    previous = list_checkpoints(output_dir)
    current = INDEX_FILE
    try:
        with atomic_path(final) as tmp:
            tmp.mkdir()
            for current, write in files.items():
                write(tmp)
            current = INDEX_FILE
            digests = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            (tmp / INDEX_FILE).write_text(json.dumps({"step": step, "files": digests}, indent=1), encoding="utf-8")
    except OSError as err:
        raise write_failure(err, final / current, previous[-1].name if previous else "none") from err
    if total_limit is not None and total_limit > 0:
        for old in [p for p in list_checkpoints(output_dir) if prunable(p)][:-total_limit]:
            shutil.rmtree(old, ignore_errors=True)
            logger.info("removed old checkpoint %s (--checkpoints-total-limit %d)", old.name, total_limit)
    return final


def read_state(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))


def _run_of(path: Path) -> str | None:
    """The run id a checkpoint records (None if unreadable)."""
    try:
        return read_state(path).get("run_id")
    except (OSError, ValueError):
        return None


def resume_identity(method: FineTuningMethod, model_fingerprint: str, dataset_fingerprint: str) -> dict[str, Any]:
    """What a checkpoint must share with a run that resumes it (stored in :data:`STATE_FILE`)."""
    return {"method": method.name, "method_config": json.loads(json.dumps(method.config.to_dict(), default=str)),
            "model_fingerprint": model_fingerprint, "dataset_fingerprint": dataset_fingerprint}


def check_compatible(saved: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
    """Same method, method config, base-model architecture and data, or a :class:`UserError` saying what differs."""
    for key, label in (("method", "method"), ("method_config", "method config"), ("model_fingerprint", "base model architecture"),
                       ("dataset_fingerprint", "training dataset")):
        if saved.get(key) != expected.get(key):
            raise UserError(
                f"checkpoint {path} is incompatible with this run: {label} differs "
                f"(checkpoint: {saved.get(key)!r}, this run: {expected.get(key)!r}); "
                "resume with the same --method / --method-config / --pretrained-model / --dataset or start a new --output-dir"
            )


def check_same_config(saved: Mapping[str, Any] | None, config: Mapping[str, Any], may_change: Collection[str], path: Path) -> None:
    """The checkpoint's recorded config equals ``config`` except in ``may_change``, or a :class:`UserError` naming the keys."""
    from hf_cxr_diffusion.runs import config_differences

    if saved is None:
        raise UserError(f"checkpoint {path} records no training configuration (an older version); start a new --output-dir")
    differing = config_differences(saved, config, may_change)
    if differing:
        shown = "; ".join(f"{k} (checkpoint: {saved.get(k)!r}, this run: {config.get(k)!r})" for k in differing)
        raise UserError(f"checkpoint {path} was trained with a different configuration: {shown}. Only "
                        f"{sorted(may_change)} may change on resume; use the checkpoint's values or start a new --output-dir")


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
        total_limit: keep at most this many of this run's checkpoints (None: all).
        run_id: the output folder's run (:mod:`.runs`); pruning only removes checkpoints it wrote.
        config: the run's full configuration, recorded in every checkpoint (:func:`check_same_config`).
    """

    def __init__(self, output_dir: Path, method: FineTuningMethod, components: Any, identity: dict[str, Any],
                 accelerator: Any, total_limit: int | None, run_id: str | None = None,
                 config: Mapping[str, Any] | None = None) -> None:
        self.out, self.method, self.components, self.identity = Path(output_dir), method, components, identity
        self.acc, self.total_limit, self.run_id, self.config = accelerator, total_limit, run_id, dict(config or {})

    def last_name(self) -> str:
        """Name of the newest complete checkpoint, or ``"none"``."""
        found = list_checkpoints(self.out)
        return found[-1].name if found else "none"

    def _ours(self, path: Path) -> bool:
        return self.run_id is not None and _run_of(path) == self.run_id

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
            target = checkpoint_dir(self.out, state.global_step)
            if (target / STATE_FILE).is_file() and not self._ours(target):
                problem = verify_checkpoint(target)
                if problem is None:
                    raise CheckpointWriteError(f"{target} belongs to another run; it is not replaced. Move it out of "
                                               f"{self.out} and resume with --resume-from-checkpoint latest")
                logger.warning("replacing damaged checkpoint %s (%s)", target.name, problem)
            names = {id(p): n for n, p in trainable_named_parameters(self.components).items()}
            record = {**state.to_json(), **self.identity, "run_id": self.run_id, "config": self.config}
            files: dict[str, Callable[[Path], None]] = {
                TRAINABLE_FILE: lambda tmp: save_file(
                    {k: v.detach().to("cpu").contiguous() for k, v in self.method.trainable_state_dict(self.components).items()},
                    str(tmp / TRAINABLE_FILE)),
                tree_files(OPTIMIZER_FILE)[0]: lambda tmp: save_tree(optimizer_state(optimizer, names), tmp, OPTIMIZER_FILE),
                tree_files(SCHEDULER_FILE)[0]: lambda tmp: save_tree(lr_scheduler.state_dict(), tmp, SCHEDULER_FILE),
                tree_files(RNG_FILE)[0]: lambda tmp: save_tree(rng_states, tmp, RNG_FILE),
            }
            if ema is not None:
                files[tree_files(EMA_FILE)[0]] = lambda tmp: save_tree(ema.state_dict(), tmp, EMA_FILE)
            files[STATE_FILE] = lambda tmp: (tmp / STATE_FILE).write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
            path = save_checkpoint(self.out, state.global_step, files, self.total_limit, prunable=self._ours)
            logger.info("saved %s", path)
        self.acc.wait_for_everyone()
        return path

    def load_trainable(self, path: Path, may_change: Collection[str] = ()) -> TrainerState:
        """Check compatibility and restore the trainable tensors (call BEFORE building the optimizer)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        saved = read_state(path)
        check_compatible(saved, self.identity, path)
        check_same_config(saved.get("config"), self.config, may_change, path)
        try:
            self.method.load_trainable_state_dict(self.components, load_file(str(path / TRAINABLE_FILE)))
        except (KeyError, RuntimeError, SafetensorError) as err:
            raise UserError(f"checkpoint {path} does not fit this model/method: {err}") from err
        return TrainerState.from_json(saved)

    def load_rest(self, path: Path, optimizer: torch.optim.Optimizer, lr_scheduler: Any, ema: Any | None) -> None:
        """Restore optimizer, scheduler, EMA and this process's global RNG states."""
        named = trainable_named_parameters(self.components)
        load_optimizer_state(optimizer, load_tree(path, OPTIMIZER_FILE), named)
        lr_scheduler.load_state_dict(load_tree(path, SCHEDULER_FILE))
        if ema is not None and (path / tree_files(EMA_FILE)[1]).is_file():
            ema.load_state_dict(load_tree(path, EMA_FILE))
        rng = load_tree(path, RNG_FILE)
        world, rank = self.acc.num_processes, self.acc.process_index
        if len(rng) != world:
            logger.warning("checkpoint has RNG states of %d process(es), this run has %d: dropout streams differ", len(rng), world)
        restore_rng_state(rng[rank % len(rng)])
