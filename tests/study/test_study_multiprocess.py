"""A study under a real two-process ``accelerate launch`` (CPU, gloo) ends like the one-process study.

Train and generate run on both processes, evaluate and utility on the main one, markers are written
once; the base model's images (no training, so no effective-batch difference) must be the very images
one process draws, and its evaluation the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hf_cxr_diffusion.artefacts import SYNTHETIC_IMAGES_DIR
from hf_cxr_diffusion.study import run_study
from hf_cxr_diffusion.study.results import RESULTS_JSON, TABLES_MD
from hf_cxr_diffusion.study.runner import StudyFolder
from study_files import METHODS, minimal_study, write_study

# a two-process study of base + LoRA and a one-process base run (~60 s on 2 cores); the one-process run uses one
# thread like the launched processes (OMP_NUM_THREADS=1): with 2 threads a pixel may differ in its last bit
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _image_hashes(folder: StudyFolder, run: str) -> dict[str, str]:
    images = folder.stage_dir(run, "generate") / SYNTHETIC_IMAGES_DIR
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(images.glob("*.png"))}


def test_two_process_study_matches_one_process(tmp_path: Path) -> None:
    study_file = write_study(tmp_path / "study.yaml", minimal_study(methods=[dict(METHODS[0])]))
    out = tmp_path / "launched"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(Path(sys.executable).parent / "cxr-diffusion"), "study", "--config", str(study_file), "--output-dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # the main process alone prints the runs it ran (the other returns the same result quietly)
    assert done.stdout.count("lora: train, generate, evaluate, utility") == 1, done.stdout

    launched = StudyFolder(out)
    for run, stages in {"base": ("generate", "evaluate", "utility"), "lora": ("train", "generate", "evaluate", "utility")}.items():
        for stage in stages:
            assert launched.read_stage(run, stage) is not None, (run, stage)
    summary = json.loads((launched.stage_dir("lora", "train") / "training_summary.json").read_text())
    assert summary["num_processes"] == 2
    rows = json.loads((out / RESULTS_JSON).read_text())["rows"]
    assert sorted((r["run"], r["condition"]) for r in rows) == [
        ("base", "Cardiomegaly"), ("base", "No Finding"), ("lora", "Cardiomegaly"), ("lora", "No Finding")]
    assert (out / TABLES_MD).is_file()

    single = tmp_path / "single"
    run_study(study_file, single, only=["base"])
    alone = StudyFolder(single)
    hashes = _image_hashes(launched, "base")
    assert len(hashes) == 4 and hashes == _image_hashes(alone, "base")
    assert len(_image_hashes(launched, "lora")) == 4
    got, want = ({k: v for k, v in f.read_stage("base", "evaluate").items() if k != "seconds"} for f in (launched, alone))
    assert got == want and len(got) > 2
