"""Experiment trackers (``--report-to tensorboard|wandb``) through ``accelerate``'s tracker integration.

What a run logs: ``train/loss`` and ``train/lr`` after every optimizer step, ``validation/<metric>`` each time
validation metrics run, and every validation grid as the image ``validation/<tag>`` (``step-000100``,
``final``). TensorBoard writes under ``OUTPUT_DIR/<--logging-dir>/hf-cxr-diffusion/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hf_cxr_diffusion.training.config import TrainConfig

PROJECT = "hf-cxr-diffusion"


def tracker_config(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` flattened for experiment trackers (non-scalar values as JSON strings)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in cfg.to_dict().items()}


class Trackers:
    """The run's trackers, or a no-op when ``--report-to none``; logs on the main process only (accelerate's rule)."""

    def __init__(self, cfg: TrainConfig, accelerator: Any) -> None:
        self.cfg, self.acc = cfg, accelerator
        self.enabled = cfg.report_to != "none"

    def start(self) -> None:
        if self.enabled:
            self.acc.init_trackers(PROJECT, config=tracker_config(self.cfg))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.enabled and values:
            self.acc.log(values, step=step)

    def image(self, tag: str, path: str | Path, step: int) -> None:
        """Log the PNG at ``path`` (a validation grid) as ``validation/<tag>``."""
        if not (self.enabled and self.acc.is_main_process):
            return
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        tracker = self.acc.get_tracker(self.cfg.report_to, unwrap=False)
        if self.cfg.report_to == "tensorboard":
            tracker.log_images({f"validation/{tag}": np.asarray(rgb)[None]}, step=step, dataformats="NHWC")
        else:
            tracker.log_images({f"validation/{tag}": [rgb]}, step=step)
