"""Two processes under `accelerate launch --multi_gpu` on CPU (gloo): parameters identical on both ranks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

SCRIPT = """
import os, sys
from safetensors.torch import save_file
from hf_cxr_diffusion.methods.base import trainable_named_parameters
from hf_cxr_diffusion.training.config import TrainConfig
from hf_cxr_diffusion.training.trainer import train

model, data, out = sys.argv[1:4]
cfg = TrainConfig(pretrained_model=model, dataset=data, output_dir=out, method="lora", resolution=64, train_batch_size=2,
                  max_train_steps=3, checkpointing_steps=0, learning_rate=1e-3, final_reload_check=False,
                  method_config={"rank": 2, "lora_dropout": 0.1})
result = train(cfg)
params = {k: v.detach().contiguous() for k, v in trainable_named_parameters(result.components).items()}
save_file(params, os.path.join(out, f"rank-{os.environ['RANK']}.safetensors"))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_gloo_run_keeps_ranks_identical(tiny_model_dir, tiny_dataset_dir, tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(_free_port()), str(script), str(tiny_model_dir), str(tiny_dataset_dir), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [load_file(str(out / f"rank-{r}.safetensors")) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and ranks[0]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    lora_b = [k for k in ranks[0] if "lora_B" in k]
    assert any(ranks[0][k].abs().sum() > 0 for k in lora_b)  # trained (B starts at zero)
    summary = (out / "training_summary.json").read_text()
    assert '"num_processes": 2' in summary and '"effective_batch_size": 4' in summary
