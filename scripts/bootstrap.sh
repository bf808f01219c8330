#!/usr/bin/env bash
# Create .venv (if missing) and install the project with the pinned, known-good versions.
# Idempotent: re-installs only when pyproject.toml or constraints.txt changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${CXR_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.cxr-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log="$venv/.install.log"
  echo "installing hf-cxr-diffusion into $venv (log: $log) ..."
  if ! { "$venv/bin/python" -m pip install --upgrade "pip>=24" \
       && "$venv/bin/python" -m pip install -c constraints.txt -e ".[test]"; } >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "install failed; full log: $log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
