"""The shipped study presets load, expand into their runs and plan from the model configuration alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_cxr_diffusion.study import load_study, plan_study
from hf_cxr_diffusion.study.config import PRESET_DIR

PRESETS = sorted((PRESET_DIR / "study").glob("*.yaml"))


def test_presets_exist() -> None:
    assert [p.stem for p in PRESETS] == ["paradigm-chexpert", "paradigm-phantom", "selora-iu-xray"]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_expands(path: Path) -> None:
    study = load_study(path)
    runs = [r.name for r in study.runs()]
    expected = {"paradigm-phantom": 1 + 12, "paradigm-chexpert": 1 + 11, "selora-iu-xray": (1 + 4) * 3}[path.stem]
    assert len(runs) == expected and len(set(runs)) == expected
    for run in study.runs():
        if not run.is_base:
            cfg = study.train_config(run, dataset="data", output_dir="out")
            assert cfg.pretrained_model == study.base_model and cfg.seed == run.seed


def test_paper_protocol_plan_counts_sd15_without_weights() -> None:
    """LoRA r 8 and the full U-Net on SD 1.5: the counts of the README's method table, from the configuration."""
    study = load_study(PRESET_DIR / "study" / "paradigm-chexpert.yaml")
    runs = [r for r in study.runs() if r.name in ("lora", "unet")]
    jobs = {j.run.name: j for j in plan_study(study, runs)}
    assert jobs["lora"].trainable_parameters == 1_594_368 and jobs["unet"].trainable_parameters == 859_520_964
    assert round(jobs["lora"].optimizer_memory_mib) == 24 and jobs["lora"].images_to_generate == 6 * 5000
