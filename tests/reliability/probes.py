"""Fault-injection probes of train, generate and prepare, shared by tests/reliability and bench/faults.py.

Each probe injects one fault into a real run on the tiny pipeline (train, generate) or a phantom corpus
(prepare) and returns an :class:`Outcome`: whether the run recovered (a resume finished with the output of
an uninterrupted run, or the fault was refused with a clear message and nothing was written), and how many
complete artefacts that existed before the fault (checkpoints, images, a prepared folder) were lost or
damaged by it (must be 0).
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

COMMAND = [sys.executable, "-c", "import sys; from hf_cxr_diffusion.cli import console_main; sys.exit(console_main())"]
CLI = [*COMMAND, "train"]
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
    killed, problem = _kill_after(proc, lambda: (out / "checkpoint-2" / checkpoints.STATE_FILE).is_file(), delay,
                                  "checkpoint-2")
    if problem:
        return Outcome(False, 0, problem)
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
    os.kill(first.pid, signal.SIGSTOP)  # the first writer stays alive (and locked) however fast the machine is
    try:
        train(cfg)
        refused, message = False, "second writer was not refused"
    except UserError as err:
        refused, message = "is being written by train run PID" in str(err), str(err)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first.wait()
    lost = 0 if first.returncode == 0 and intact(out) == {"checkpoint-2", "checkpoint-4"} else 1
    return Outcome(refused and first.returncode == 0, lost, message[:120])


def files(folder: Path, *, skip: tuple[str, ...] = (runs.RUN_FILE,)) -> dict[str, bytes]:
    """Every file of ``folder`` (relative path -> bytes) but the run record (who wrote it, when)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in skip}


def _kill_after(proc: subprocess.Popen, started: Any, delay: float, what: str) -> tuple[bool, str]:
    """Wait until ``started()`` (or the process ends), sleep ``delay`` s, then SIGKILL; ``(killed, problem)``."""
    deadline = time.monotonic() + 300
    while not started():
        if proc.poll() is not None:
            return False, f"first run ended before {what}: rc {proc.returncode} {proc.stderr.read()[-300:]}"
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return False, f"{what} never happened"
        time.sleep(0.005)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return killed, ""


def run_in_process(args: list[str]) -> Path:
    """Run the CLI command ``args`` (made for a subprocess) in this process: the uninterrupted reference run.
    Returns its ``--output-dir``."""
    from hf_cxr_diffusion.cli import main

    code = main(args[len(COMMAND):])
    if code != 0:
        raise RuntimeError(f"reference run {args[len(COMMAND)]} exited {code}")
    return Path(args[args.index("--output-dir") + 1])


def generate_argv(model: Path, prompts: Path, out: Path) -> list[str]:
    """`generate` of ``prompts`` on the tiny model: 4 euler_a steps (stochastic: the per-image generator must be
    restored exactly), one image per pipeline call."""
    return [*COMMAND, "generate", "--pretrained-model", str(model), "--prompts-file", str(prompts), "--scheduler", "euler_a",
            "--steps", "4", "--seed", "5", "--batch-size", "1", "--output-dir", str(out)]


def generate_sigkill_then_resume(model: Path, prompts: Path, out: Path, reference: Path, seed: int) -> Outcome:
    """SIGKILL `generate` a seeded random time (0-1 s) after its first image appears, then run the same command again:
    every file but the run record must equal the uninterrupted run's (``reference``) byte for byte, with no lock or
    temporary left; data lost = images complete before the resume that it changed or removed."""
    from hf_cxr_diffusion.generation.writer import is_intact_png

    delay = random.Random(seed).uniform(0.0, 1.0)
    args = generate_argv(model, prompts, out)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
    killed, problem = _kill_after(proc, lambda: (out / "images" / "000000.png").is_file(), delay, "the first image")
    if problem:
        return Outcome(False, 0, problem)
    before = {p.name: p.read_bytes() for p in sorted((out / "images").glob("*.png")) if is_intact_png(p)}
    done = subprocess.run(args, capture_output=True, text=True, env=env())
    after = files(out)
    lost = sum(after.get(f"images/{name}") != data for name, data in before.items())
    leftovers = [name for name in after if Path(name).name.startswith(".")] + [runs.LOCK_FILE] * (out / runs.LOCK_FILE).exists()
    ok = done.returncode == 0 and after == files(reference) and not leftovers
    detail = f"killed {'after' if killed else 'never (run ended first),'} {delay:.2f}s with {len(before)} images done"
    return Outcome(ok, lost, detail if ok else f"{detail}; rc {done.returncode} {done.stderr[-300:]} leftovers {leftovers}")


def prepare_argv(corpus: Path, out: Path) -> list[str]:
    """`prepare` of a phantom pneumonia-layout corpus at 64 px, 8 rows per parquet shard."""
    return [*COMMAND, "prepare", "--corpus", "pneumonia", "--data-dir", str(corpus), "--output-dir", str(out),
            "--resolution", "64", "--max-shard-rows", "8"]


def prepare_sigkill_then_rerun(corpus: Path, out: Path, reference: Path, seed: int, *, over_previous: bool) -> Outcome:
    """SIGKILL `prepare` a seeded random time (0-1 s) after it starts building its folder (a hidden sibling), then run
    it again: every file but the run record must equal the uninterrupted run's byte for byte, with no lock or
    half-built folder left. With ``over_previous`` the folder already holds a complete earlier prepare of the same
    run, which must still be complete and unchanged right after the kill (data lost = 1 if not)."""
    import shutil

    delay = random.Random(seed).uniform(0.0, 1.0)
    if over_previous:
        shutil.copytree(reference, out)
    args = prepare_argv(corpus, out)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
    building = lambda: any(temporary_of(p.name) for p in out.parent.iterdir())  # noqa: E731
    killed, problem = _kill_after(proc, building, delay, "building the folder")
    if problem:
        return Outcome(False, 0, problem)
    lost = int(over_previous and not (out.is_dir() and files(out, skip=(runs.RUN_FILE, runs.LOCK_FILE)) == files(reference)))
    done = subprocess.run(args, capture_output=True, text=True, env=env())
    leftovers = [p.name for p in out.parent.iterdir() if temporary_of(p.name)] + [runs.LOCK_FILE] * (out / runs.LOCK_FILE).exists()
    ok = done.returncode == 0 and files(out) == files(reference) and not leftovers
    detail = f"killed {'after' if killed else 'never (run ended first),'} {delay:.2f}s{' over a complete folder' if over_previous else ''}"
    return Outcome(ok, lost, detail if ok else f"{detail}; rc {done.returncode} {done.stderr[-300:]} leftovers {leftovers}")


def concurrent_stage_writer(args: list[str], out: Path, reference: Path) -> Outcome:
    """The CLI command ``args`` (generate or prepare) run again in this process while a first run of it (a subprocess)
    is writing ``out``: refused with the lock message; the first finishes with the uninterrupted run's files."""
    import contextlib
    import io

    from hf_cxr_diffusion.cli import main

    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
    deadline = time.monotonic() + 300
    while not (out / runs.LOCK_FILE).is_file():
        if first.poll() is not None or time.monotonic() > deadline:
            first.kill()
            first.wait()
            return Outcome(False, 0, "first run never locked the folder")
        time.sleep(0.005)
    stderr = io.StringIO()
    os.kill(first.pid, signal.SIGSTOP)  # the first writer stays alive (and locked) however fast the machine is
    try:
        with contextlib.redirect_stderr(stderr):
            code = main(args[len(COMMAND):])
    finally:
        os.kill(first.pid, signal.SIGCONT)
    message = (stderr.getvalue().strip().splitlines() or [""])[-1]
    refused = code == 2 and "is being written by" in message
    first.wait()
    same = first.returncode == 0 and files(out) == files(reference)
    return Outcome(refused and same, 0 if same else 1, message[:120] if refused else f"second run: exit {code} {message}")
