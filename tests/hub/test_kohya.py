"""`export-lora --format kohya`: the file diffusers' own kohya conversion loads gives the original adapter's images."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hub_sources import run_pipe
from safetensors.torch import load_file

from hf_cxr_diffusion.cli import main
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hub.kohya import export_kohya

KOHYA_KEY = re.compile(r"^lora_(unet|te)_[A-Za-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")


def _tiny(model: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def lora_dir(lora_run) -> Path:
    """The real 2-step U-Net LoRA run of the session."""
    return lora_run.output_dir


@pytest.fixture(scope="module")
def te_lora_dir(tiny_model_dir, phantom_dataset_dir, tmp_path_factory) -> Path:
    """A real 2-step LoRA run on U-Net and text encoder of the tiny model."""
    from artefact_makers import train_tiny

    out = tmp_path_factory.mktemp("te-lora") / "run"
    return train_tiny(tiny_model_dir, phantom_dataset_dir, out, "lora",
                      {"train_text_encoder": True, "init_lora_weights": False}).output_dir


@pytest.mark.parametrize("which", ["unet", "unet+text_encoder"])
def test_kohya_file_loads_back_to_the_same_images(which, lora_dir, te_lora_dir, tiny_model_dir, tmp_path):
    adapter = lora_dir if which == "unet" else te_lora_dir
    output = tmp_path / "kohya" / "adapter.safetensors"
    assert main(["export-lora", str(adapter), "--format", "kohya", "--output", str(output)]) == 0
    tensors = load_file(str(output))
    assert tensors and all(KOHYA_KEY.match(k) for k in tensors), [k for k in tensors if not KOHYA_KEY.match(k)][:3]
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in tensors) == (which != "unet")
    assert {float(v) for k, v in tensors.items() if k.endswith(".alpha")} == {4.0}  # lora_alpha of the run
    base = run_pipe(_tiny(tiny_model_dir))
    original = _tiny(tiny_model_dir)
    original.load_lora_weights(str(adapter))
    converted = _tiny(tiny_model_dir)
    converted.load_lora_weights(str(output.parent), weight_name=output.name)  # diffusers' kohya conversion
    np.testing.assert_allclose(run_pipe(converted), run_pipe(original), atol=1e-5)
    assert np.abs(run_pipe(original) - base).max() > 1e-3  # the adapter changes the output


def test_dora_and_bad_outputs_are_refused(dora_te_run, lora_dir, tmp_path):
    with pytest.raises(UserError, match="DoRA adapter: the kohya format has no agreed key"):
        export_kohya(dora_te_run.output_dir, tmp_path / "dora.safetensors")
    with pytest.raises(UserError, match="inside the training output"):
        export_kohya(lora_dir, lora_dir / "kohya.safetensors")
    with pytest.raises(UserError, match="must end in .safetensors"):
        export_kohya(lora_dir, tmp_path / "kohya.pt")
