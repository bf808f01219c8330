"""Study files for the study tests, written as a user would (YAML), at minimal size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: three light methods from the paradigm presets, trained 1 step on phantom-base at 64 px
METHODS = [
    {"name": "lora", "preset": "paradigm-08-lora", "label": "LoRA"},
    {"name": "bitfit", "preset": "paradigm-10-bitfit", "label": "BitFit"},
    {"name": "difffit", "preset": "paradigm-11-difffit", "label": "DiffFit"},
]
TRAIN = {"resolution": 64, "max_train_steps": 1, "train_batch_size": 2, "mixed_precision": "no", "checkpointing_steps": 0,
         "validation_prompts": [], "final_reload_check": False}


def minimal_study(**changes: Any) -> dict[str, Any]:
    """A 3-method study of 2 conditions, 2 images each, 2 sampler steps, a 1-epoch classifier."""
    study = {
        "name": "minimal", "base_model": "phantom-base", "phantoms": {"n": 60, "seed": 0, "resolution": 64},
        "conditions": ["No Finding", "Cardiomegaly"], "train": dict(TRAIN), "methods": [dict(m) for m in METHODS],
        "generation": {"per_condition": 2, "steps": 2, "batch_size": 4},
        "evaluation": {"feature_model": "phantom", "batch_size": 64},
        "utility": {"arch": "small-cnn", "epochs": 1, "image_size": 64, "batch_size": 8, "lr": 1.0e-3},
    }
    study.update(changes)
    return study


def write_study(path: Path, study: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(study, sort_keys=False), encoding="utf-8")
    return path
