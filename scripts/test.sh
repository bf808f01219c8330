#!/usr/bin/env bash
# Install (if needed) and run the test suite offline.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
export HF_HUB_OFFLINE=1
exec "${CXR_VENV:-$root/.venv}/bin/python" -m pytest -q "$@"
