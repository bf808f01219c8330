"""The built wheel works pip-installed (non-editable) from a folder that is not the clone (issue 18).

The wheel is built from a copy of the working tree, installed with ``--no-deps`` into a fresh virtual
environment that sees this environment's dependencies through a ``.pth`` line (its site-packages added
as a plain path: the editable install of the clone is not picked up), and every stage runs from a temp
folder: prepare (phantoms), train 2 steps from a *shipped preset name*, generate, evaluate and every
``publish --dry-run`` kind, with the card templates, presets and metric modules read from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: what a copy of the clone leaves out (environments, caches, build output, outputs of earlier runs)
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                     ".pytest_cache", "hub-exports", "demo_output")

DRIVER = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import hf_cxr_diffusion
    from hf_cxr_diffusion.cli import main

    assert "site-packages" in hf_cxr_diffusion.__file__, hf_cxr_diffusion.__file__
    prompt = "Chest X-ray of a subject with Cardiomegaly"
    Path("prompts.txt").write_text(prompt + "\\n" + prompt + "\\n")
    steps = [
        ["make-phantoms", "corpus", "--layout", "chexpert", "--n", "24", "--resolution", "64"],
        ["prepare", "--corpus", "chexpert", "--data-dir", "corpus", "--output-dir", "prepared", "--resolution", "64"],
        ["make-tiny-model", "tiny-sd"],
        ["train", "--config", "paradigm-08-lora", "--pretrained-model", "tiny-sd", "--dataset", "prepared",
         "--output-dir", "lora", "--resolution", "64", "--train-batch-size", "2", "--gradient-accumulation-steps", "1",
         "--max-train-steps", "2", "--validation-prompts", prompt, "--num-validation-inference-steps", "2"],
        ["train", "--config", "paradigm-01-full-unet", "--pretrained-model", "tiny-sd", "--dataset", "prepared",
         "--output-dir", "full", "--resolution", "64", "--train-batch-size", "2", "--gradient-accumulation-steps", "1",
         "--max-train-steps", "1", "--validation-prompts", "--no-final-reload-check"],
        ["generate", "--pretrained-model", "tiny-sd", "--adapter", "lora", "--prompts-file", "prompts.txt",
         "--scheduler", "ddim", "--steps", "2", "--out", "synthetic"],
        ["evaluate", "--dataset", "prepared", "--split", "test", "--synthetic", "synthetic", "--metrics", "vendi",
         "--allow-random-weights", "--output-dir", "evaluation"],
        ["publish", "adapter", "lora", "--repo-id", "org/lora", "--license", "mit", "--dry-run", "--export-dir",
         "exports/adapter", "--base-model", "org/tiny-sd"],
        ["publish", "model", "full", "--repo-id", "org/full", "--license", "mit", "--dry-run", "--export-dir",
         "exports/model"],
        ["publish", "dataset", "synthetic", "--repo-id", "org/synthetic", "--license", "mit", "--dry-run",
         "--export-dir", "exports/dataset"],
        ["publish", "space", "lora", "--repo-id", "org/lora-demo", "--license", "mit", "--dry-run", "--export-dir",
         "exports/space", "--base-model", "org/tiny-sd"],
        ["publish", "metric", "xrv_fid", "--repo-id", "org/xrv_fid", "--license", "apache-2.0", "--dry-run",
         "--export-dir", "exports/xrv_fid"],
    ]
    for argv in steps:
        code = main(argv)
        assert code == 0, (argv, code)
    summary = json.loads(Path("lora/training_summary.json").read_text())
    print(json.dumps({"lora_rank": summary["method_config"]["rank"], "steps": summary["steps"]}))
''')


def _site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


@pytest.mark.slow
def test_wheel_installed_non_editable_runs_every_stage(tmp_path: Path) -> None:
    source = shutil.copytree(REPO, tmp_path / "source", ignore=_NOT_SOURCE)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(source)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("hf_cxr_diffusion-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("configs/paradigm-08-lora.yaml", "configs/paradigm/_base.yaml", "model_cards/adapter.md",
                    "metrics/xrv_fid/xrv_fid.py", "metrics/xrv_fid/cxr_core.py", "dataset_scripts/chexpert.py"):
        assert f"hf_cxr_diffusion/_shipped/{shipped}" in names, shipped

    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                             capture_output=True, text=True).stdout.strip()
    Path(purelib, "outer_env.pth").write_text(_site_packages() + "\n")  # the dependencies, not the clone
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True)

    work = tmp_path / "user"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_CXR_MODEL_CARDS")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    listed = subprocess.run([env_dir / "bin" / "cxr-diffusion", "presets"], cwd=work, env=env, check=True,
                            capture_output=True, text=True).stdout
    assert "paradigm-08-lora" in listed and "LoRA on the U-Net" in listed and "_base" not in listed
    run = subprocess.run([python, "-c", DRIVER], cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    assert '"lora_rank": 8' in run.stdout and '"steps": 2' in run.stdout  # the shipped preset's rank, our steps
    for kind in ("adapter", "model", "dataset", "space", "xrv_fid"):
        assert (work / "exports" / kind / "README.md").is_file(), kind
