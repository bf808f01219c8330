#!/usr/bin/env bash
# Create .venv (if missing) and install the project with the pinned, known-good versions.
# Idempotent: re-installs only when pyproject.toml or constraints.txt changed.
# Prints one line per phase with the elapsed time, and pip's own progress (also kept in the log).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${CXR_VENV:-$root/.venv}"
start=$SECONDS
phase() { echo "[bootstrap +$((SECONDS - start))s] $*"; }
if [ ! -x "$venv/bin/python" ]; then
  phase "creating the virtual environment $venv"
  python3 -m venv "$venv"
fi
stamp="$venv/.cxr-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log="$venv/.install.log"
  : > "$log"
  pip_step() {  # pip_step DESCRIPTION ARGS...: run pip, showing its output and appending it to the log
    local what="$1"
    shift
    phase "$what"
    if ! "$venv/bin/python" -m pip "$@" --progress-bar on 2>&1 | tee -a "$log"; then
      echo "install failed during: $what; full log: $log" >&2
      exit 1
    fi
  }
  phase "installing hf-cxr-diffusion into $venv (log: $log)"
  pip_step "upgrading pip" install --upgrade "pip>=24"
  pip_step "installing torch + torchvision (the largest download, about 2.5 GB with CUDA)" \
    install -c constraints.txt torch torchvision
  pip_step "installing hf-cxr-diffusion and the rest of the pinned set" install -c constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
  phase "done: $(du -sh "$venv" 2>/dev/null | cut -f1) in $venv"
else
  phase "$venv is up to date with pyproject.toml and constraints.txt"
fi
