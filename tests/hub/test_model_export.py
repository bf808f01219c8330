"""Adapter / model exports: loaded back by diffusers, cards parsed by huggingface_hub."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hub import export
from hf_cxr_diffusion.hub.files import list_files

from hub_sources import run_pipe

REPO = "cxr-lab/tiny-lora"
LORA_FILES = [
    "README.md", "cxr_method.json", "images/final.png", "images/loss_curve.png",
    "metrics.json", "pytorch_lora_weights.safetensors", "training_summary.json",
]


@pytest.fixture(scope="module")
def lora_export(lora_output, tmp_path_factory) -> Path:
    src, _ = lora_output
    return export("adapter", src, tmp_path_factory.mktemp("exports") / "adapter", repo_id=REPO, license="cc-by-nc-4.0")


def test_lora_export_reproduces_adapter_output(lora_export, lora_output, tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    _, reference = lora_output
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    base = run_pipe(pipe)
    pipe.load_lora_weights(str(lora_export))
    np.testing.assert_allclose(run_pipe(pipe), reference, atol=1e-5)
    assert np.abs(base - reference).max() > 1e-3  # the adapter really changes the output


def test_lora_export_holds_only_what_belongs(lora_export, lora_output):
    src, _ = lora_output
    assert list_files(lora_export) == LORA_FILES
    assert (lora_export / "pytorch_lora_weights.safetensors").read_bytes() == (src / "pytorch_lora_weights.safetensors").read_bytes()


def test_lora_card_metadata(lora_export):
    card = ModelCard.load(lora_export / "README.md")
    data = card.data
    assert data.base_model == "runwayml/stable-diffusion-v1-5"
    assert data.license == "cc-by-nc-4.0"
    assert {"diffusers", "lora", "text-to-image", "medical", "chest-x-ray", "lora"} <= set(data.tags)
    scores = {r.metric_type: r.metric_value for r in data.eval_results}
    assert scores == {"xrv_fid": 12.5, "vendi": 3.25, "class_consistency": 0.75, "memorisation": 0.0}
    assert {r.task_type for r in data.eval_results} == {"text-to-image"}
    assert "Not for clinical use" in card.text
    assert "images/final.png" in card.text  # the latest validation grid
    assert 'pipe.load_lora_weights("cxr-lab/tiny-lora")' in card.text
    assert "random_weights: true" in card.text  # the report flagged random feature weights
    method = json.loads((lora_export / "cxr_method.json").read_text())
    assert f"{method['trainable_parameters']:,}" in card.text


def test_license_is_required(lora_output, tmp_path):
    with pytest.raises(UserError, match="--license is required"):
        export("adapter", lora_output[0], tmp_path / "x", repo_id=REPO, license=None)
    assert not (tmp_path / "x").exists()


def test_missing_files_are_named(tmp_path):
    src = tmp_path / "run"
    src.mkdir()
    with pytest.raises(UserError, match="missing cxr_method.json"):
        export("adapter", src, tmp_path / "x", repo_id=REPO, license="mit")
    (src / "cxr_method.json").write_text(json.dumps({"method": "lora", "base_model": "b"}))
    with pytest.raises(UserError, match="pytorch_lora_weights.safetensors, cxr_adapter.safetensors or model_index.json"):
        export("adapter", src, tmp_path / "x", repo_id=REPO, license="mit")


def test_bitfit_tensors_export(lora_output, tmp_path):
    src = tmp_path / "bitfit-run"
    src.mkdir()
    tensors = {"unet.conv_in.bias": torch.randn(32), "unet.conv_out.bias": torch.randn(4)}
    save_file(tensors, src / "cxr_adapter.safetensors")
    (src / "cxr_method.json").write_text(json.dumps({"method": "bitfit", "config": {}, "base_model": "tiny/base"}))
    shutil.copytree(lora_output[0] / "checkpoint-10", src / "checkpoint-10")
    out = export("adapter", src, tmp_path / "export", repo_id=REPO, license="mit")
    assert list_files(out) == ["README.md", "cxr_adapter.safetensors", "cxr_method.json"]
    loaded = load_file(out / "cxr_adapter.safetensors")
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    card = ModelCard.load(out / "README.md")
    assert "lora" not in card.data.tags and "bitfit" in card.data.tags
    assert "36" in card.text  # trainable parameters counted from the tensors (32 + 4)
    assert "load_adapter(pipe" in card.text


def test_full_model_export_loads_as_pipeline(tiny_model_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    src = tmp_path / "full-run"
    shutil.copytree(tiny_model_dir, src)
    (src / "cxr_method.json").write_text(json.dumps({"method": "full", "config": {}, "base_model": "tiny/base"}))
    (src / "checkpoint-3").mkdir()
    (src / "checkpoint-3" / "optimizer.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="publish model"):
        export("adapter", src, tmp_path / "a", repo_id=REPO, license="mit")
    out = export("model", src, tmp_path / "model", repo_id=REPO, license="openrail")
    assert not any(f.startswith("checkpoint-") for f in list_files(out))
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    ref = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(ref, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert ModelCard.load(out / "README.md").data.license == "openrail"


def test_bitfit_export_loads_with_our_loader(tiny_model_dir, tmp_path):
    """A real BitFit artefact (methods.bitfit.save), exported, then applied by hf_cxr_diffusion's load_adapter."""
    from diffusers import StableDiffusionPipeline

    from hf_cxr_diffusion.methods import get_method, load_adapter
    from hf_cxr_diffusion.models.loading import load_components

    components = load_components(tiny_model_dir)
    method = get_method("bitfit")
    method.apply(components)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in components.unet.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    src = method.save(components, tmp_path / "bitfit-run", base_model="cxr-lab/base")
    out = export("adapter", src, tmp_path / "export", repo_id=REPO, license="mit")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    load_adapter(pipe, out)
    trained = components.unet.state_dict()
    loaded = pipe.unet.state_dict()
    changed = [k for k, p in components.unet.named_parameters() if p.requires_grad]
    assert changed and all(torch.equal(loaded[k], trained[k]) for k in changed)
