"""Every artefact the trainer saves (methods' ``save``) generates through ``--adapter``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_cxr_diffusion.generation import generate, inspect_adapter
from hf_cxr_diffusion.generation.prompts import PromptItem, PromptPlan

PLAN = PromptPlan((PromptItem("chest x-ray"),), ())
OPTS = dict(scheduler="dpm", steps=2, seed=3)


@pytest.fixture(scope="module")
def base_image(tiny_model_dir, tmp_path_factory) -> np.ndarray:
    out = generate(tiny_model_dir, PLAN, tmp_path_factory.mktemp("gen") / "base", **OPTS)
    return np.asarray(Image.open(out / "images" / "000000.png"))


@pytest.mark.parametrize(("method", "kind"), [("bitfit", "cxr_adapter"), ("difffit", "cxr_adapter"), ("dora", "lora"), ("full", "pipeline")])
def test_saved_method_output_generates(method, kind, tiny_model_dir, base_image, tmp_path) -> None:
    from hf_cxr_diffusion.methods.registry import get_method
    from hf_cxr_diffusion.models.loading import load_components

    components = load_components(tiny_model_dir)
    trained = get_method(method)
    trained.apply(components)
    torch.manual_seed(0)
    with torch.no_grad():  # stand-in for training: move every trainable tensor
        for param in components.unet.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    adapter = trained.save(components, tmp_path / method, base_model=str(tiny_model_dir))
    info = inspect_adapter(adapter)
    assert (info.kind, info.method) == (kind, method)
    out = generate(tiny_model_dir, PLAN, tmp_path / "out", adapter=adapter, **OPTS)
    image = np.asarray(Image.open(out / "images" / "000000.png"))
    assert not np.array_equal(image, base_image)  # the adapter was applied
    config = json.loads((out / "generation_config.json").read_text())
    assert (config["adapter_method"], config["adapter_sha256"], config["base_model"]) == (method, info.sha256, str(tiny_model_dir))
