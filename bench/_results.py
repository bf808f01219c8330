"""Shared helper of the ``bench/`` scripts: write one run's results as ``bench/results/<name>.json``.

A bench script calls :func:`write_results` with its rows (today ``bench/prepare.py``; a ``bench/all.py`` that reads the
latest file of each is still to be written).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.io import write_json_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_results(name: str, results: dict[str, Any], *, command: str = "") -> Path:
    """Atomically write ``{"name", "time", "load_average", "machine", "command", "results"}`` to ``results/<name>.json``."""
    RESULTS_DIR.mkdir(exist_ok=True)
    payload = {"name": name, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_average": os.getloadavg(),
               "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "command": command,
               "results": results}
    return write_json_atomic(RESULTS_DIR / f"{name}.json", payload)

