#!/usr/bin/env bash
# Install (if needed) and run the whole job offline on the embedded tiny default.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
export HF_HUB_OFFLINE=1
exec "${CXR_VENV:-$root/.venv}/bin/cxr-diffusion" demo --overwrite --output-dir "${1:-$root/demo_output}"
