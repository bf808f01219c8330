"""Fault-injection probes of the trainer, shared by tests/reliability and bench/faults.py.

Each probe injects one fault into a real training run on the tiny pipeline and returns a
:class:`Outcome`: whether the run recovered (a resume finished with the weights of an uninterrupted
run, or the fault was refused with a clear message and nothing was written), and how many complete
checkpoints that existed before the fault were lost or damaged by it (must be 0).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from hf_cxr_diffusion import runs
from hf_cxr_diffusion.artefacts import LORA_WEIGHTS_FILE
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import temporary_of
from hf_cxr_diffusion.training import checkpoints
from hf_cxr_diffusion.training.config import TrainConfig
from hf_cxr_diffusion.training.trainer import train

CLI = [sys.executable, "-c", "import sys; from hf_cxr_diffusion.cli import main; sys.exit(main())", "train"]
METHOD_CONFIG = {"rank": 2, "lora_alpha": 4, "lora_dropout": 0.1}


@dataclasses.dataclass
class Outcome:
    recovered: bool
    data_lost: int
    detail: str = ""


def options(model: Path, data: Path, out: Path, **kw: Any) -> dict[str, Any]:
    """A LoRA run with dropout and EMA (global RNG and EMA state must survive a resume), 6 steps, a checkpoint every 2."""
    return {"pretrained_model": str(model), "dataset": str(data), "output_dir": str(out), "method": "lora", "resolution": 64,
            "train_batch_size": 4, "max_train_steps": 6, "checkpointing_steps": 2, "learning_rate": 1e-3, "seed": 3, **kw}


def argv(opts: dict[str, Any]) -> list[str]:
    args = [a for k, v in opts.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    return args + ["--use-ema", "--no-final-reload-check", "--method-config", json.dumps(METHOD_CONFIG)]


def env() -> dict[str, str]:
    """Subprocesses with the parent's torch thread count (bit-exact reductions need the same split)."""
    threads = str(torch.get_num_threads())
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1"}


def reference_weights(model: Path, data: Path, out: Path) -> dict[str, torch.Tensor]:
    """Final LoRA weights of an uninterrupted run (in-process)."""
    cfg = TrainConfig(**options(model, data, out), use_ema=True, final_reload_check=False, method_config=METHOD_CONFIG)
    train(cfg)
    return load_file(str(out / LORA_WEIGHTS_FILE))


def intact(out: Path) -> set[str]:
    return {p.name for p in checkpoints.list_checkpoints(out) if checkpoints.verify_checkpoint(p) is None}


def same_weights(out: Path, reference: dict[str, torch.Tensor]) -> bool:
    path = out / LORA_WEIGHTS_FILE
    if not path.is_file():
        return False
    ours = load_file(str(path))
    return ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)


def damage(path: Path, how: str) -> None:
    """``truncate`` the file to half its size or ``flip`` one byte in its middle."""
    raw = bytearray(path.read_bytes())
    if how == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def sigkill_then_resume(model: Path, data: Path, out: Path, reference: dict[str, torch.Tensor], seed: int) -> Outcome:
    """SIGKILL the CLI a seeded random time (0-1.5 s) after its first checkpoint appears (often mid-step or mid-save),
    then ``--resume-from-checkpoint latest``: the final weights must equal the uninterrupted run's."""
    delay = random.Random(seed).uniform(0.0, 1.5)
    args = argv(options(model, data, out))
    proc = subprocess.Popen(CLI + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-2" / checkpoints.STATE_FILE).is_file():
        if proc.poll() is not None:
            return Outcome(False, 0, f"first run failed: {proc.stderr.read()[-300:]}")
        if time.monotonic() > deadline:
            proc.kill()
            return Outcome(False, 0, "checkpoint-2 never appeared")
        time.sleep(0.01)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = intact(out)
    done = subprocess.run(CLI + args + ["--resume-from-checkpoint", "latest"], capture_output=True, text=True, env=env())
    lost = len(before - intact(out))
    leftovers = [p.name for p in out.iterdir() if temporary_of(p.name)]
    ok = done.returncode == 0 and same_weights(out, reference) and not leftovers
    detail = f"killed {'after' if killed else 'never (run ended first),'} {delay:.2f}s; intact before resume: {sorted(before)}"
    return Outcome(ok, lost, detail if ok else f"{detail}; rc {done.returncode} {done.stderr[-300:]} leftovers {leftovers}")


def corrupt_file_then_resume(model: Path, data: Path, out: Path, name: str, how: str) -> Outcome:
    """Damage file ``name`` of the newest checkpoint (``truncate`` or ``flip`` a byte); ``latest`` must fall back to the
    previous intact checkpoint, name the damaged one, and finish the run."""
    import logging

    opts = options(model, data, out, max_train_steps=2, checkpointing_steps=1)
    cfg = TrainConfig(**opts, use_ema=True, final_reload_check=False, method_config=METHOD_CONFIG)
    train(cfg)
    damage(out / "checkpoint-2" / name, how)
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("hf_cxr_diffusion.training.checkpoints")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)  # the warning must be emitted whatever the root level
    try:
        result = train(dataclasses.replace(cfg, max_train_steps=3, resume_from_checkpoint="latest"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    named = any("checkpoint-2" in r and name in r for r in records)
    ok = named and result.summary["resumed_from_step"] == 1 and result.global_step == 3
    return Outcome(ok, 0 if "checkpoint-1" in intact(out) else 1, f"{name} {how}: warned {named}")


def concurrent_writer(model: Path, data: Path, out: Path) -> Outcome:
    """A second ``train`` into a folder another live process is writing is refused and writes nothing; the first
    run finishes intact."""
    args = argv(options(model, data, out, max_train_steps=4))
    first = subprocess.Popen(CLI + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
    deadline = time.monotonic() + 300
    while not (out / runs.LOCK_FILE).is_file():
        if first.poll() is not None or time.monotonic() > deadline:
            return Outcome(False, 0, "first run never locked the folder")
        time.sleep(0.01)
    cfg = TrainConfig(**options(model, data, out, max_train_steps=4, seed=9), use_ema=True, final_reload_check=False,
                      method_config=METHOD_CONFIG)
    try:
        train(cfg)
        refused, message = False, "second writer was not refused"
    except UserError as err:
        refused, message = "is being written by train run PID" in str(err), str(err)
    first.wait()
    lost = 0 if first.returncode == 0 and intact(out) == {"checkpoint-2", "checkpoint-4"} else 1
    return Outcome(refused and first.returncode == 0, lost, message[:120])
