"""Adapter / model exports of real training outputs: loaded back by diffusers, cards parsed by huggingface_hub."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from hub_sources import local_paths_in, run_pipe

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


SNAPSHOT_REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def snapshot_lora(tiny_model_dir, phantom_dataset_dir, tmp_path_factory) -> Path:
    """A real 2-step LoRA run from the tiny model laid out as a Hub-cache snapshot, with the report of a real
    `evaluate` of its images."""
    from artefact_makers import PHANTOM_PROMPT, evaluate_cli, generate_tiny, train_tiny

    root = tmp_path_factory.mktemp("snapshot-run")
    base = shutil.copytree(tiny_model_dir, root / "hub" / "models--cxr-lab--tiny-sd" / "snapshots" / SNAPSHOT_REVISION)
    out = train_tiny(base, phantom_dataset_dir, root / "lora", "lora", {"init_lora_weights": False}).output_dir
    synthetic = generate_tiny(base, root / "synthetic", [PHANTOM_PROMPT] * 2, adapter=out)
    evaluate_cli(phantom_dataset_dir, synthetic, root / "evaluation", "xrv_fid,vendi", "--allow-random-weights", into=out)
    return out


def test_lora_from_a_hub_cache_snapshot_links_its_base_model(snapshot_lora, tmp_path):
    """Issue 18: base_model from models--ORG--NAME/snapshots/<sha>; metrics of the real report in model-index;
    what ran (precision used, device) and the phantom corpus on the card; no local path in any exported file."""
    out = export("adapter", snapshot_lora, tmp_path / "export", repo_id="cxr-lab/snap-lora", license="mit")
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "cxr-lab/tiny-sd"
    assert "[cxr-lab/tiny-sd](https://huggingface.co/cxr-lab/tiny-sd)" in card.text
    report = read_report(snapshot_lora / "report.json")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        name: report.metrics[name].value for name in ("xrv_fid", "vendi")}
    assert "| precision used | `no` |" in card.text and "| device | `cpu` |" in card.text
    assert "Procedural phantoms made by hf-cxr-diffusion" in card.text and "**phantom** radiographs" in card.text
    assert "CheXpert" not in card.text and "CC BY 4.0" not in card.text  # no real corpus's data-use terms
    assert 'DiffusionPipeline.from_pretrained("cxr-lab/tiny-sd", dtype=torch.float16)' in card.text
    assert 'pipe.load_lora_weights("cxr-lab/snap-lora")' in card.text and "torch_dtype" not in card.text
    assert local_paths_in(out) == {}
    assert read_training_output(out).base_model == "cxr-lab/tiny-sd"


@pytest.fixture(scope="module")
def dora_output(dora_te_run, tiny_model_dir, phantom_dataset_dir, tmp_path_factory) -> Path:
    """The real 2-step DoRA run (trained from a plain local folder) with the report of a real `evaluate`."""
    from artefact_makers import PHANTOM_PROMPT, evaluate_cli, generate_tiny

    root = tmp_path_factory.mktemp("dora-run")
    out = Path(shutil.copytree(dora_te_run.output_dir, root / "dora"))
    synthetic = generate_tiny(tiny_model_dir, root / "synthetic", [PHANTOM_PROMPT] * 2, adapter=out)
    evaluate_cli(phantom_dataset_dir, synthetic, root / "evaluation", "xrv_fid,vendi", "--allow-random-weights", into=out)
    return out


def test_dora_card_says_when_the_base_model_is_unknown_and_takes_an_override(dora_output, tiny_model_dir, tmp_path):
    out = export("adapter", dora_output, tmp_path / "unknown", repo_id="cxr-lab/dora", license="mit")
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None
    assert "**unknown**: trained from a local folder `tiny-sd`" in card.text and "--base-model ORG/NAME" in card.text
    assert 'DiffusionPipeline.from_pretrained("BASE_MODEL_ID")' in card.text
    assert len(card.data.eval_results) == 2
    assert local_paths_in(out) == {}
    out = export("adapter", dora_output, tmp_path / "known", repo_id="cxr-lab/dora", license="mit",
                 base_model="cxr-lab/tiny-sd")
    from hf_cxr_diffusion.methods import load_adapter
    from hf_cxr_diffusion.models.loading import load_pipeline

    # the header rewritten without the text encoder's local path: the same DoRA is loaded
    ours, theirs = (run_pipe(load_adapter(load_pipeline(tiny_model_dir, safety_checker=None), f)) for f in (dora_output, out))
    np.testing.assert_array_equal(ours, theirs)
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "cxr-lab/tiny-sd"
    assert 'from_pretrained("cxr-lab/tiny-sd")' in card.text and 'snapshot_download("cxr-lab/dora")' in card.text
    assert local_paths_in(out) == {}
    with pytest.raises(UserError, match="--base-model '/tmp/x' is not a Hub model id"):
        export("adapter", dora_output, tmp_path / "bad", repo_id="cxr-lab/dora", license="mit", base_model="/tmp/x")


def test_base_model_hub_id_sources(tiny_model_dir, tmp_path):
    from hf_cxr_diffusion.hub.files import hub_id_of

    assert hub_id_of("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    assert hub_id_of(f"/x/hub/models--runwayml--stable-diffusion-v1-5/snapshots/{SNAPSHOT_REVISION}") == \
        "runwayml/stable-diffusion-v1-5"
    assert hub_id_of(str(tiny_model_dir)) is None
    # a pipeline folder whose model_index.json records the Hub id it came from
    folder = shutil.copytree(tiny_model_dir, tmp_path / "saved")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_name_or_path": "cxr-lab/tiny-sd"}))
    assert hub_id_of(str(folder)) == "cxr-lab/tiny-sd"
