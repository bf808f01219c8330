"""Every YAML preset in configs/ trains on the tiny pipeline with finite loss and leaves frozen tensors alone.

Overridden: model, dataset, output folder, steps, and (for CPU cost) resolution 64, batch 2, no
accumulation; DreamBooth also gets a temporary class-image folder and 2 class images (2 sampler steps).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_trainer import frozen_tensors_unchanged
from training_helpers import write_dataset

from hf_cxr_diffusion.models.loading import load_components
from hf_cxr_diffusion.training.config import load_config
from hf_cxr_diffusion.training.dreambooth import class_image_paths, ensure_class_images
from hf_cxr_diffusion.training.trainer import train

PRESETS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_all_paper_setups_have_a_preset() -> None:
    names = [p.stem for p in PRESETS]
    assert len([n for n in names if n.startswith("paradigm-")]) == 11
    assert {"lora-prompt2medimage", "dreambooth-sd21-pneumonia", "selora-iu-xray"} <= set(names)


@pytest.fixture(scope="module")
def base_components(tiny_model_dir):
    return load_components(tiny_model_dir)


@pytest.fixture(scope="module")
def four_images(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "four", {"train": 4})


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_trains_on_the_tiny_model(preset, tiny_model_dir, four_images, base_components, tmp_path) -> None:
    overrides = dict(pretrained_model=str(tiny_model_dir), dataset=str(four_images), output_dir=str(tmp_path / "out"),
                     max_train_steps=1, resolution=64, train_batch_size=2, gradient_accumulation_steps=1,
                     final_reload_check=False, validation_prompts=[])
    cfg = load_config(preset, overrides)
    if cfg.with_prior_preservation:
        cfg.class_data_dir, cfg.num_class_images, cfg.class_generation_steps = str(tmp_path / "class"), 2, 2
    result = train(cfg)
    assert result.global_step == 1 and math.isfinite(result.final_loss)
    assert frozen_tensors_unchanged(result.components, base_components) == []
    assert (tmp_path / "out" / "cxr_method.json").is_file()
    if cfg.with_prior_preservation:
        images = class_image_paths(tmp_path / "class")
        assert len(images) == 2
        stamps = [p.stat().st_mtime_ns for p in images]
        again = ensure_class_images(base_components, tmp_path / "class", cfg.class_prompt, 2, 0, 64, 2)
        assert again == images and [p.stat().st_mtime_ns for p in again] == stamps  # generated once, reused
