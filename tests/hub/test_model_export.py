"""Adapter / model exports of real training outputs: loaded back by diffusers, cards parsed by huggingface_hub."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from hub_sources import run_pipe

from hf_cxr_diffusion.artefacts import read_report, read_training_output
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hub import export
from hf_cxr_diffusion.hub.files import list_files

REPO = "cxr-lab/tiny-lora"
LORA_FILES = [
    "README.md", "cxr_method.json", "images/final.png", "images/loss_curve.png",
    "pytorch_lora_weights.safetensors", "report.json", "training_summary.json",
]  # fmt: skip


@pytest.fixture(scope="module")
def lora_export(lora_output, tmp_path_factory) -> Path:
    src, _ = lora_output
    return export("adapter", src, tmp_path_factory.mktemp("exports") / "adapter", repo_id=REPO, license="cc-by-nc-4.0")


def test_lora_export_reproduces_the_trained_pipeline(lora_export, lora_output, tiny_model_dir):
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
    assert any(p.name.startswith("checkpoint-") for p in src.iterdir())  # the trainer's resumable state stays home
    assert list_files(lora_export) == LORA_FILES
    assert (lora_export / "pytorch_lora_weights.safetensors").read_bytes() == (src / "pytorch_lora_weights.safetensors").read_bytes()


def test_card_shows_the_metrics_of_the_evaluate_report(lora_export, lora_output):
    """Regression: `evaluate` wrote `"metrics": [names]` and the card reader wanted a dict, so model-index was empty."""
    src, _ = lora_output
    report = read_report(src / "report.json")
    card = ModelCard.load(lora_export / "README.md")
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) == {"xrv_fid", "vendi"}
    for name, result in results.items():
        assert result.metric_value == report.metrics[name].value
        assert result.metric_config == "xrv-fid-v2" and result.task_type == "text-to-image"
    assert "| XRV-FID | " in card.text and "densenet121-res224-all (random)" in card.text
    assert "random_weights: true" in card.text  # the report flagged random feature weights


def test_lora_card_text(lora_export):
    card = ModelCard.load(lora_export / "README.md")
    assert card.data.license == "cc-by-nc-4.0"
    assert {"diffusers", "lora", "text-to-image", "medical", "chest-x-ray"} <= set(card.data.tags)
    assert "Not for clinical use" in card.text
    assert "images/final.png" in card.text  # the latest validation grid
    assert 'pipe.load_lora_weights("cxr-lab/tiny-lora")' in card.text
    trained = read_training_output(lora_export).trainable_parameters
    assert trained and f"{trained:,}" in card.text


def test_license_is_required(lora_output, tmp_path):
    with pytest.raises(UserError, match="--license is required"):
        export("adapter", lora_output[0], tmp_path / "x", repo_id=REPO, license=None)
    assert not (tmp_path / "x").exists()


def test_missing_files_are_named(lora_output, tmp_path):
    src = tmp_path / "run"
    src.mkdir()
    with pytest.raises(UserError, match="no cxr_method.json"):
        export("adapter", src, tmp_path / "x", repo_id=REPO, license="mit")
    shutil.copy(lora_output[0] / "cxr_method.json", src)
    with pytest.raises(UserError, match="diffusers_lora training output but pytorch_lora_weights.safetensors is missing"):
        export("adapter", src, tmp_path / "x", repo_id=REPO, license="mit")


def _moved(method_name: str, model_dir: Path):
    """Components of ``model_dir`` with ``method_name`` applied and every trainable tensor moved (a stand-in for training)."""
    from hf_cxr_diffusion.methods import get_method
    from hf_cxr_diffusion.models.loading import load_components

    components = load_components(model_dir)
    method = get_method(method_name)
    method.apply(components)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in components.unet.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return method, components


def test_bitfit_export_loads_with_our_loader(tiny_model_dir, tmp_path):
    """A real BitFit artefact (methods.bitfit.save), exported, then applied by hf_cxr_diffusion's load_adapter."""
    from diffusers import StableDiffusionPipeline

    from hf_cxr_diffusion.methods import load_adapter

    method, components = _moved("bitfit", tiny_model_dir)
    src = method.save(components, tmp_path / "bitfit-run", base_model="cxr-lab/base")
    out = export("adapter", src, tmp_path / "export", repo_id=REPO, license="mit")
    assert list_files(out) == ["README.md", "cxr_adapter.safetensors", "cxr_method.json"]
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    load_adapter(pipe, out)
    trained, loaded = components.unet.state_dict(), pipe.unet.state_dict()
    changed = [k for k, p in components.unet.named_parameters() if p.requires_grad]
    assert changed and all(torch.equal(loaded[k], trained[k]) for k in changed)
    card = ModelCard.load(out / "README.md")
    assert "lora" not in card.data.tags and "bitfit" in card.data.tags
    assert f"{sum(components.unet.get_parameter(k).numel() for k in changed):,}" in card.text
    assert "load_adapter(pipe" in card.text


def test_full_model_export_loads_as_pipeline(tiny_model_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    method, components = _moved("full", tiny_model_dir)
    src = method.save(components, tmp_path / "full-run", base_model="cxr-lab/base")
    (src / "checkpoint-3").mkdir()
    (src / "checkpoint-3" / "optimizer.pt").write_bytes(b"x")
    with pytest.raises(UserError, match="publish model"):
        export("adapter", src, tmp_path / "a", repo_id=REPO, license="mit")
    out = export("model", src, tmp_path / "model", repo_id=REPO, license="openrail")
    assert not any(f.startswith("checkpoint-") for f in list_files(out))
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(components, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert ModelCard.load(out / "README.md").data.license == "openrail"
