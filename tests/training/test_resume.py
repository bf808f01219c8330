"""Kill -9 in the middle of a CLI run, resume with --resume-from-checkpoint latest: same weights as never stopping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from hf_cxr_diffusion.training.config import TrainConfig
from hf_cxr_diffusion.training.trainer import train

CLI = [sys.executable, "-c", "import sys; from hf_cxr_diffusion.cli import console_main; sys.exit(console_main())", "train"]


def test_sigkill_then_resume_equals_uninterrupted(tiny_model_dir, tiny_dataset_dir, tmp_path: Path) -> None:
    # LoRA dropout and EMA make the global RNG and the EMA state part of what must be restored;
    # 6 steps of 3 batches per epoch cross an epoch boundary after the resume point (step 2 or later).
    options = dict(pretrained_model=str(tiny_model_dir), dataset=str(tiny_dataset_dir), method="lora", resolution=64,
                   train_batch_size=4, max_train_steps=6, checkpointing_steps=2, learning_rate=1e-3, use_ema=True,
                   seed=3, final_reload_check=False)
    method_config = {"rank": 2, "lora_alpha": 4, "lora_dropout": 0.1}
    reference = train(TrainConfig(**options, method_config=method_config, output_dir=str(tmp_path / "reference")))

    out = tmp_path / "killed"
    argv = [arg for key, value in options.items() if key != "final_reload_check"
            for arg in (f"--{key.replace('_', '-')}", str(value)) if key != "use_ema"]
    argv += ["--use-ema", "--no-final-reload-check", "--output-dir", str(out), "--method-config", json.dumps(method_config)]
    # bit-exact needs the same number of torch threads as the in-process reference (reductions split by thread)
    threads = str(torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    proc = subprocess.Popen(CLI + argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint-2" / "trainer_state.json").is_file():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "checkpoint-2 never appeared"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "pytorch_lora_weights.safetensors").exists()  # really interrupted

    done = subprocess.run(CLI + argv + ["--resume-from-checkpoint", "latest"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["steps"] == 6

    ours = load_file(str(out / "pytorch_lora_weights.safetensors"))
    theirs = load_file(str(tmp_path / "reference" / "pytorch_lora_weights.safetensors"))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    history = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["loss_history"]
    assert [tuple(x) for x in history] == reference.loss_history
