"""scripts/bootstrap.sh: a line per phase with the elapsed time, pip's output shown and logged, idempotent.

pip itself is not run (an install takes minutes and the network): the environment's ``python`` is a shell
script that prints the pip command it was given, or fails when asked to.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fake_venv(tmp_path: Path, fail_on: str = "") -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/usr/bin/env bash\necho "pip says: $*"\n[[ -n "{fail_on}" && "$*" == *"{fail_on}"* ]] && exit 3\n'
                      "exit 0\n")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return venv


def _run(venv: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "bootstrap.sh")], env={**os.environ, "CXR_VENV": str(venv)},
                          capture_output=True, text=True, timeout=60)


def test_bootstrap_prints_each_phase_with_elapsed_time_and_pips_output(tmp_path):
    venv = _fake_venv(tmp_path)
    first = _run(venv)
    assert first.returncode == 0, first.stderr
    phases = re.findall(r"^\[bootstrap \+(\d+)s\] (.*)$", first.stdout, flags=re.M)
    assert [p[1].split(" (")[0] for p in phases][:4] == [
        f"installing hf-cxr-diffusion into {venv}", "upgrading pip", "installing torch + torchvision",
        "installing hf-cxr-diffusion and the rest of the pinned set"]
    assert phases[-1][1].startswith("done: ")
    assert "pip says: -m pip install -c constraints.txt -e .[test] --progress-bar on" in first.stdout
    assert "pip says: -m pip install --upgrade pip>=24" in (venv / ".install.log").read_text()
    again = _run(venv)
    assert again.returncode == 0 and "is up to date with pyproject.toml and constraints.txt" in again.stdout
    assert "pip says" not in again.stdout


def test_a_failed_install_names_the_phase_and_writes_no_stamp(tmp_path):
    venv = _fake_venv(tmp_path, fail_on="torchvision")
    result = _run(venv)
    assert result.returncode == 1
    assert f"install failed during: installing torch + torchvision (the largest download, about 2.5 GB with CUDA); " \
           f"full log: {venv}/.install.log" in result.stderr
    assert not (venv / ".cxr-installed").exists()
