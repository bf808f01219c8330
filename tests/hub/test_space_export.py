"""`publish space`: a Gradio Space folder whose app generates from the adapter (tested without launching gradio)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from huggingface_hub import SpaceCard
from hub_sources import local_paths_in

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hub import export
from hf_cxr_diffusion.hub.files import list_files


def _import_app(folder):
    spec = importlib.util.spec_from_file_location("space_app_under_test", folder / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_space_folder_generates_from_the_adapter(lora_run, tiny_model_dir, tmp_path):
    out = export("space", lora_run.output_dir, tmp_path / "space", repo_id="cxr-lab/tiny-lora-demo", license="mit",
                 base_model="cxr-lab/tiny-sd")
    assert list_files(out) == ["README.md", "app.py", "requirements.txt", "space_config.json"]
    card = SpaceCard.load(out / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.models == ["cxr-lab/tiny-lora", "cxr-lab/tiny-sd"]
    assert "SYNTHETIC" in card.text and "diagnose" in card.text
    assert (out / "requirements.txt").read_text().split() == ["torch", "diffusers>=0.40", "transformers", "accelerate",
                                                               "peft", "safetensors"]
    config = json.loads((out / "space_config.json").read_text())
    assert config["findings"] == ["Pneumonia"]  # the training data's labels (phantom pneumonia layout)
    assert local_paths_in(out) == {}
    app = _import_app(out)
    assert app.prompt_for(["Pneumonia"]) == "Chest X-ray of a subject with Pneumonia"
    pipe = app.load_pipeline(str(tiny_model_dir), str(lora_run.output_dir))  # the Hub ids, here as local folders
    first = np.asarray(app.generate(["Pneumonia"], seed=3, steps=2, pipe=pipe))
    assert first.shape[:2] == (64, 64) and first.std() > 0
    np.testing.assert_array_equal(first, np.asarray(app.generate(["Pneumonia"], seed=3, steps=2, pipe=pipe)))
    assert not np.array_equal(first, np.asarray(app.generate([], seed=3, steps=2, pipe=pipe)))


def test_space_needs_hub_ids(lora_run, tmp_path):
    with pytest.raises(UserError, match="has no Hub id; a Space loads it from the Hub: pass --base-model"):
        export("space", lora_run.output_dir, tmp_path / "a", repo_id="cxr-lab/tiny-lora-demo", license="mit")
    with pytest.raises(UserError, match="pass --adapter-repo"):
        export("space", lora_run.output_dir, tmp_path / "b", repo_id="cxr-lab/space", license="mit",
               base_model="cxr-lab/tiny-sd")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
