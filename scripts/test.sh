#!/usr/bin/env bash
# Install (if needed) and run the test suite offline.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
export HF_HUB_OFFLINE=1
# two workers with one torch thread each (tests/conftest.py): on 2 cores 8 minutes instead of 15, since most tests
# are single-threaded Python and oversubscribed threads spin; whole files per worker keep module fixtures shared.
# Pass -n 0 to run in one process, -n N for more cores.
exec "${CXR_VENV:-$root/.venv}/bin/python" -m pytest -q -n 2 --dist loadfile "$@"
