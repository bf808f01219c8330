"""Who wrote an output folder, and one writer at a time: the run record and the lock of a stage's output.

Every stage that writes an output folder can claim it through this module (the trainer does)::

    <output_dir>/cxr_run.json    the run record: stage, run id, config (+ its sha256), dataset and
                                 base-model fingerprints, start time, resumes
    <output_dir>/cxr_run.lock    PID and host of the process writing now (removed when it ends)

:class:`OutputLock` stops a second concurrent writer with a clear message and takes over the lock
of a dead process on the same host (with a warning). :func:`claim_output_dir` refuses a folder
whose record names a different run (listing the differing keys) unless ``overwrite``, in which
case it removes only the entries the stage owns, so nothing a run did not write is ever deleted.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hashing import sha256_file, sha256_json
from hf_cxr_diffusion.io import remove_entry, temporary_of, temporary_sibling, write_json_atomic

logger = logging.getLogger(__name__)

RUN_FILE = "cxr_run.json"
LOCK_FILE = "cxr_run.lock"
#: the entries this module writes into every claimed folder (a stage's foreign-file check must allow them)
RECORD_ENTRIES: tuple[str, ...] = (RUN_FILE, LOCK_FILE)
#: config keys that never make a different run (where to resume from, whether to overwrite)
NOT_IDENTITY = frozenset({"resume_from_checkpoint", "overwrite"})
#: training options that may change when a run is resumed: how long it runs, where it is, how often it
#: checkpoints and validates, where and whether it logs, the final check's policy, and caching (which
#: changes no result, :mod:`.rng`)
TRAIN_RESUMABLE = frozenset({
    "max_train_steps", "num_train_epochs", "output_dir", "checkpointing_steps", "checkpoints_total_limit",
    "validation_steps", "validation_metrics_steps", "report_to", "logging_dir", "final_reload_check",
    "allow_reload_mismatch", "cache_latents", "validation_epochs", "num_validation_images",
}) | NOT_IDENTITY
#: generation options that may change when a folder is resumed: how many images (the prompts' hash stays
#: identity) and the batch size (which changes no image when each image is denoised on its own, the CPU
#: default: the generator drops it from this set otherwise)
GENERATE_RESUMABLE = frozenset({"num_images", "batch_size"}) | NOT_IDENTITY
#: evaluate options that may differ when a folder is evaluated again: where it runs and how many images at a time
EVALUATE_RESUMABLE = frozenset({"device", "batch_size"}) | NOT_IDENTITY
#: prepare options that may differ in a folder it writes again: the decoding processes (the bytes are the same
#: whatever their number) and where the folder is
PREPARE_RESUMABLE = frozenset({"num_proc", "output_dir"}) | NOT_IDENTITY


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def input_fingerprint(source: str | os.PathLike) -> str:
    """A cheap fingerprint of an input: for a local folder the sha256 of its files' names and sizes (and of
    the contents of its small JSON files, e.g. the prepare info); for anything else (a hub id) the id itself."""
    path = Path(source)
    if not path.exists():
        return str(source)
    if path.is_file():
        return sha256_file(path)
    entries = []
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = file.relative_to(path).as_posix()
        small_json = file.suffix == ".json" and file.stat().st_size < 1 << 20
        entries.append([rel, file.stat().st_size, sha256_file(file) if small_json else None])
    return sha256_json(entries)[:16]


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], may_change: Collection[str] = ()) -> list[str]:
    """Keys (sorted) whose values differ between two configs, ignoring ``may_change``."""
    keys = (set(old) | set(new)) - set(may_change)
    return sorted(k for k in keys if json.dumps(old.get(k), sort_keys=True, default=str) != json.dumps(new.get(k), sort_keys=True, default=str))


@dataclasses.dataclass
class RunIdentity:
    """Who a run is: its stage, what it was asked to do and on what.

    Args:
        stage: the writing stage (``"train"``).
        config: the full configuration (JSON-able).
        dataset_fingerprint: :func:`input_fingerprint` of the data it reads.
        base_model_fingerprint: the base model's fingerprint (architecture).
        extra: other identity fields (e.g. the method actually run, when it is not the config's).
    """

    stage: str
    config: dict[str, Any]
    dataset_fingerprint: str
    base_model_fingerprint: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """The recorded identity (config hash over every key but :data:`NOT_IDENTITY`)."""
        config = json.loads(json.dumps(self.config, default=str))
        hashed = {k: v for k, v in config.items() if k not in NOT_IDENTITY}
        return {"stage": self.stage, "config_hash": sha256_json(hashed), "config": config,
                "dataset_fingerprint": self.dataset_fingerprint, "base_model_fingerprint": self.base_model_fingerprint,
                **json.loads(json.dumps(self.extra, default=str))}


def read_record(output_dir: str | Path) -> dict[str, Any] | None:
    """The run record of ``output_dir``, or None if it has none."""
    path = Path(output_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"{path} is not valid JSON ({err}); it records which run owns the folder: "
                        "choose another --output-dir or pass --overwrite") from err


def identity_differences(record: Mapping[str, Any], identity: Mapping[str, Any], may_change: Collection[str]) -> list[str]:
    """Identity keys that differ (config keys as ``config.<key>``), ignoring the config keys in ``may_change``."""
    keys = sorted((set(record) | set(identity)) - {"config", "config_hash", "run_id", "started_at", "resumes", "pid", "host"})
    out = [k for k in keys if record.get(k) != identity.get(k)]
    old, new = record.get("config") or {}, identity.get("config") or {}
    return out + [f"config.{k}" for k in config_differences(old, new, set(may_change) | NOT_IDENTITY)]


def plan_claim(output_dir: str | Path, identity: RunIdentity, *, owned: Callable[[str], bool], overwrite: bool,
               resuming: bool | None, may_change: Collection[str] = ()) -> tuple[dict[str, Any], bool]:
    """The checks of :func:`claim_output_dir` without touching the folder: ``(record to write, replacing)``.

    ``replacing`` says the folder's previous run (if any) is replaced: the record has a new run id. Stages that
    write their folder in one atomic swap (prepare) write the record into the new folder themselves.
    """
    out = Path(output_dir)
    fields = identity.fields()
    record = read_record(out)
    implicit = resuming is None
    flag_hint = ("choose another --output-dir or pass --overwrite to replace its outputs" if implicit else
                 "choose another --output-dir, resume it with --resume-from-checkpoint, or pass --overwrite to replace its outputs")
    if record is None:
        leftovers = sorted(p.name for p in out.iterdir() if owned(p.name)) if out.is_dir() else []
        if leftovers and not overwrite:
            raise UserError(f"output folder {out} holds outputs of an unrecorded run ({', '.join(leftovers[:4])}); {flag_hint}")
        differing: list[str] = []
    else:
        leftovers = []
        differing = identity_differences(record, fields, may_change if resuming or implicit else ())
        if record.get("stage") != identity.stage:
            raise UserError(f"output folder {out} holds the outputs of a {record.get('stage', '?')} run ({RUN_FILE}); "
                            f"a {identity.stage} run never writes into another stage's folder, even with --overwrite: "
                            "choose another --output-dir (e.g. a new sub-folder)")
        kept = sorted(p.name for p in out.iterdir() if owned(p.name))
        if differing and not overwrite and not kept:
            logger.info("output folder %s is recorded for another %s run that wrote none of its outputs there (differing: "
                        "%s): taking it over", out, identity.stage, ", ".join(differing[:8]))
        elif differing and not overwrite:
            shown = ", ".join(differing[:8]) + (f" and {len(differing) - 8} more" if len(differing) > 8 else "")
            raise UserError(f"output folder {out} was written by a different {record.get('stage', '?')} run "
                            f"(started {record.get('started_at', '?')}); differing: {shown}; {flag_hint}")
    replacing = record is None or bool(differing)
    if implicit:
        resuming = not replacing
    if replacing and resuming and (differing or leftovers):
        raise UserError(f"output folder {out} is not recorded as this run's ({', '.join(differing) or 'no record'}); "
                        "a resume never replaces another run's outputs: resume into the checkpoint's own --output-dir")
    if replacing:
        return {**fields, "run_id": uuid.uuid4().hex, "started_at": now_iso(), "resumes": []}, True
    new = {**record, **fields}
    if resuming:
        new["resumes"] = [*record.get("resumes", []), {"at": now_iso(), "config": fields["config"]}]
    return new, False


def claim_output_dir(output_dir: str | Path, identity: RunIdentity, *, owned: Callable[[str], bool], overwrite: bool,
                     resuming: bool | None, may_change: Collection[str] = ()) -> dict[str, Any]:
    """Record ``identity`` as the owner of ``output_dir`` and return the record (with its ``run_id``).

    A folder recorded for the same run (equal identity; when ``resuming`` the keys in ``may_change`` may
    differ) keeps its run id. A different run's folder, or a folder with entries ``owned`` by this stage but
    no record, is refused naming the differing keys, unless ``overwrite``: then only the ``owned`` entries
    are removed first. A different run that left none of its ``owned`` entries (it failed early) has nothing
    to lose: its folder is taken over. Another stage's folder is always refused. ``resuming=None`` is for stages that resume whatever folder of their own run they find
    (generate, evaluate): the folder is resumed when its record differs in ``may_change`` keys only.
    Call with the folder's :class:`OutputLock` held.
    """
    out = Path(output_dir)
    new, replacing = plan_claim(out, identity, owned=owned, overwrite=overwrite, resuming=resuming, may_change=may_change)
    if replacing and out.is_dir():
        removed = sorted(p.name for p in out.iterdir() if owned(p.name))
        for name in removed:
            remove_entry(out / name)
        if removed:
            logger.warning("--overwrite: removed %d output(s) of the previous run in %s (%s)", len(removed), out,
                           ", ".join(removed[:6]))
    write_json_atomic(out / RUN_FILE, new)
    return new


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """An exclusive lock on an output folder (``cxr_run.lock`` holding PID, host, stage and start time).

    A lock held by a live process (or by a process on another host, which cannot be checked) is a
    :class:`UserError`; the lock of a dead process on this host is taken over with a warning.
    Use as a context manager, or :meth:`acquire` / :meth:`release`.
    """

    def __init__(self, output_dir: str | Path, stage: str) -> None:
        self.path, self.stage, self.held = Path(output_dir) / LOCK_FILE, stage, False

    def _create(self) -> bool:
        """Create the lock with its content in one step (a hard link of a written temporary), so no other
        process ever reads a lock without its PID and takes it for a dead writer's."""
        tmp = temporary_sibling(self.path)
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "stage": self.stage,
                                   "started_at": now_iso()}), encoding="utf-8")
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def holder(self) -> dict[str, Any]:
        """What the lock file says (empty when it is unreadable, e.g. half-written by a killed process)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the lock temporaries of writers killed between writing and linking them (hidden files the stage's
        # foreign-entry checks would otherwise name)
        remove_stale_temporaries(self.path.parent, self.path.name.__eq__)
        for _ in range(3):
            if self._create():
                self.held = True
                return self
            info = self.holder()
            pid, host = info.get("pid"), info.get("host")
            same_host = host == socket.gethostname()
            if isinstance(pid, int) and same_host and pid_alive(pid):
                raise UserError(f"output folder {self.path.parent} is being written by {info.get('stage', 'another')} run "
                                f"PID {pid} on {host} (since {info.get('started_at', '?')}); wait for it to finish or "
                                "choose another --output-dir")
            if host is not None and not same_host:
                raise UserError(f"output folder {self.path.parent} is locked by PID {pid} on host {host} "
                                f"({self.path}); if that run is over, delete the lock file, else choose another --output-dir")
            logger.warning("taking over the stale lock %s of PID %s on %s (that process is gone)", self.path, pid, host)
            self.path.unlink(missing_ok=True)
        raise UserError(f"could not lock output folder {self.path.parent} ({self.path} keeps reappearing); "
                        "another run is starting there: choose another --output-dir")

    def release(self) -> None:
        if self.held and self.holder().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_stale_temporaries(output_dir: str | Path, owned: Callable[[str], bool]) -> list[str]:
    """Remove the temporaries :func:`hf_cxr_diffusion.io.atomic_path` left in ``output_dir`` for entries the stage
    ``owned``, when their writer's PID is dead (a killed save); returns their names. Call with the lock held, or
    before taking it for the lock file's own temporaries (a live writer's are never touched)."""
    out = Path(output_dir)
    removed = []
    for entry in sorted(out.iterdir()) if out.is_dir() else []:
        temporary = temporary_of(entry.name)
        if temporary and owned(temporary[0]) and temporary[1] != os.getpid() and not pid_alive(temporary[1]):
            remove_entry(entry)
            removed.append(entry.name)
    if removed:
        logger.warning("removed %d leftover temporary file(s)/folder(s) of a killed write in %s: %s", len(removed), out,
                       ", ".join(removed[:5]))
    return removed
