"""Fixtures for generation tests: adapter folders made by their real writers (the trainer, diffusers)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def lora_dir(lora_run) -> Path:
    """The output folder of a real `train --method lora` run on the tiny model."""
    return lora_run.output_dir


@pytest.fixture(scope="session")
def other_lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare diffusers LoRA folder (diffusers' own writer) for a U-Net of other widths: incompatible with the tiny model."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict

    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    out = tmp_path_factory.mktemp("adapters") / "other-lora"
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True)
    return out


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every module here runs on one intra-op thread (tests/conftest.py's ``one_torch_thread``)."""


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared-dataset-like parquet folder: 3 normal rows, 2 pneumonia rows, 1 both findings."""
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, List, Value
    from datasets import Image as ImageFeature
    from PIL import Image

    names = ["Effusion", "Pneumonia"]
    labels = [[], [], [], [1], [1], [0, 1]]
    prompts = ["normal a", "normal b", "normal c", "pneumonia a", "pneumonia b", "effusion and pneumonia"]
    features = Features({"image": ImageFeature(), "prompt": Value("string"), "labels": List(ClassLabel(names=names))})
    images = [Image.fromarray(np.full((8, 8), 10 * i, np.uint8)) for i in range(len(labels))]
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    (out / "data").mkdir(parents=True)
    Dataset.from_dict({"image": images, "prompt": prompts, "labels": labels}, features=features).to_parquet(
        str(out / "data" / "train-00000-of-00001.parquet")
    )
    return out
