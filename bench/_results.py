"""Shared helper of the ``bench/`` scripts: one run's results as ``bench/results/<name>.json``.

The convention (also what ``bench/metrics.py --json bench/results/metrics.json`` writes): a JSON object with
``load_average_start`` and ``load_average_end`` (``os.getloadavg()`` before and after the timed work) beside the
results. :func:`write_results` adds ``name``, ``time`` (UTC), ``machine`` and ``command``; ``bench/all.py`` reads the
files with :func:`read_results` and tabulates their headline ratios.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.io import write_json_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_results(name: str, results: dict[str, Any], *, command: str = "",
                  load_before: tuple[float, float, float] | None = None) -> Path:
    """Atomically write ``results`` with the run's load averages, time and machine to ``results/<name>.json``."""
    RESULTS_DIR.mkdir(exist_ok=True)
    payload = {"name": name, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "load_average_start": load_before or os.getloadavg(), "load_average_end": os.getloadavg(),
               "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "command": command,
               "results": results}
    return write_json_atomic(RESULTS_DIR / f"{name}.json", payload)


def read_results(name: str) -> dict[str, Any] | None:
    """The last ``results/<name>.json`` written, or ``None`` if there is none."""
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None
