"""``pretrain-base`` and ``pretrain-features`` run end to end at toy size, resume, and fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from hf_cxr_diffusion.cli import main
from hf_cxr_diffusion.errors import MissingWeightsError
from hf_cxr_diffusion.phantoms import base, features, pretrain


@pytest.mark.slow
def test_pretrain_base_few_steps_gives_a_plain_diffusers_folder(tmp_path: Path) -> None:
    cfg = pretrain.PretrainBaseConfig(num_images=40, vae_steps=2, vae_batch_size=4, diffusion_steps=3, ship_step=2, train_batch_size=4)
    out = pretrain.pretrain_base(tmp_path / "phantom-base", cfg)
    pipe = DiffusionPipeline.from_pretrained(out)
    assert pipe.vae.dtype == torch.float32  # stored in fp16, loaded as fp32 by plain diffusers
    stored = {t.dtype for f in out.rglob("*.safetensors") for t in load_file(str(f)).values()}
    assert stored == {torch.float16}
    assert 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 8 and pipe.unet.config.cross_attention_dim == 64
    image = pipe("Chest X-ray, female, age 50", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3)
    record = json.loads((out / base.RECORD_FILE).read_text())
    assert record["config"]["num_images"] == 40 and record["stages"]["diffusion"]["steps"] == 3
    assert record["stages"]["diffusion"]["shipped_step"] == 2
    # what ships are the step-2 EMA weights, not the last step's
    from safetensors.torch import load_file as load

    work = tmp_path / "phantom-base-work"
    shipped = load(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    at_two = load(str(work / "diffusion-ema-2" / "unet" / "diffusion_pytorch_model.safetensors"))
    last = load(str(work / "diffusion" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(shipped[k], at_two[k].half()) for k in shipped)
    assert not all(torch.equal(shipped[k], last[k].half()) for k in shipped)
    assert "--num-images 40" in record["command"] and "held_out_psnr_db" in record["stages"]["vae"]
    card = (out / "README.md").read_text()
    assert "not a medical model" in card and base.CAPTION_EXAMPLE in card
    # the captions describe patient and acquisition but name no finding, and a second call reuses every finished stage
    import datasets

    prompts = datasets.load_dataset(str(tmp_path / "phantom-base-work" / "captioned"))["train"]["prompt"]
    findings = set(features.LABELS) | {"Effusion", "heart", "Finding"}
    assert all(p.startswith("Chest X-ray, ") and not any(f.lower() in p.lower() for f in findings) for p in prompts)
    assert len(set(prompts)) > 5
    stamp = (tmp_path / "phantom-base-work" / "init" / ".complete").stat().st_mtime_ns
    again = pretrain.pretrain_base(tmp_path / "phantom-base", cfg)
    assert again == out and (tmp_path / "phantom-base-work" / "init" / ".complete").stat().st_mtime_ns == stamp


def test_reconstruction_psnr_and_scaling_factor_are_measured() -> None:
    pipe = base.build_untrained_pipeline(seed=0)
    gray = np.random.default_rng(0).integers(0, 256, (4, 64, 64), dtype=np.uint8)
    x = pretrain._to_pixels(gray)
    assert pretrain.psnr(x, x) == float("inf")
    assert pretrain.psnr(x, -x) == pytest.approx(10 * np.log10(4 / torch.mean((2 * x.double()) ** 2).item()))
    assert np.isfinite(pretrain.reconstruction_psnr(pipe.vae, gray)) and pretrain.latent_scaling_factor(pipe.vae, gray) > 0


@pytest.mark.parametrize("option, value", [("--num-images", "0"), ("--learning-rate", "nan"),
                                           ("--proportion-empty-prompts", "1.0")])
def test_pretrain_base_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture, option: str, value: str) -> None:
    assert main(["pretrain-base", "--output-dir", str(tmp_path / "x"), option, value]) == 2
    assert option in capsys.readouterr().err


def test_missing_shipped_base_names_the_rebuild_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hf_cxr_diffusion.models.loading import resolve_pretrained

    monkeypatch.setattr(base, "shipped_base_dir", lambda: tmp_path / "nothing")
    with pytest.raises(MissingWeightsError, match="cxr-diffusion pretrain-base"):
        resolve_pretrained("phantom-base")


def test_pretrain_features_few_steps_and_clear_errors(tmp_path: Path) -> None:
    cfg = features.PretrainFeaturesConfig(num_images=60, epochs=1, batch_size=16)
    out = features.pretrain_features(tmp_path / "features", cfg)
    model, provenance = features.load_feature_net(out)
    assert provenance["protocol"] == features.PROTOCOL_ID and provenance["random_weights"] is False
    assert len(provenance["sha256"]) == 64
    x = torch.stack([features.preprocess_gray(np.full((80, 96), 128, np.uint8), 255.0)] * 2)
    assert x.shape == (2, 1, 64, 64) and model(x).shape == (2, len(features.LABELS))
    record = json.loads((out / features.CONFIG_FILE).read_text())
    assert set(record["held_out_auc"]) == set(features.LABELS) and record["labels"] == list(features.LABELS)
    assert "Not a medical model" in (out / "README.md").read_text()
    assert len(record["operating_points"]) == 14 and all(0 <= t <= 1 for t in record["operating_points"])
    assert torch.allclose(model.operating_points, torch.tensor(record["operating_points"]))
    (out / features.WEIGHTS_FILE).write_bytes(b"truncated")
    with pytest.raises(MissingWeightsError, match=r"model\.safetensors.*cxr-diffusion pretrain-features"):
        features.load_feature_net(out)
    _, random = features.load_feature_net(out, allow_random_weights=True)
    assert random["random_weights"] is True


def test_preprocess_gray_is_the_protocol() -> None:
    gray = (np.arange(100 * 80) % 65536).astype(np.uint16).reshape(100, 80)
    x = features.preprocess_gray(gray, 65535.0)
    assert x.shape == (1, 64, 64) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    square = np.full((64, 64), 255, np.uint8)
    assert torch.equal(features.preprocess_gray(square, 255.0), torch.ones(1, 64, 64))


def test_shipped_feature_network_recognises_the_demo_findings_on_fresh_phantoms(tmp_path: Path) -> None:
    """The shipped weights load by default and separate findings on phantoms of a seed it never saw."""
    from hf_cxr_diffusion.phantoms.corpus import make_phantoms
    from hf_cxr_diffusion.phantoms.manifest import read_manifest

    model, provenance = features.load_feature_net()
    assert provenance == {**provenance, "protocol": "phantom-fid-v1", "weights": "phantom-features", "random_weights": False}
    corpus = make_phantoms(tmp_path / "c", layout="chexpert", n=240, seed=12345, resolution=64,
                           findings=["Cardiomegaly", "Pleural Effusion"])
    records = read_manifest(corpus)
    x = torch.stack([features.preprocess_gray(np.asarray(Image.open(corpus / r.path).convert("L")), 255.0) for r in records])
    probs = features.predict(model, x)
    for name in ("Cardiomegaly", "Pleural Effusion"):
        y = np.array([name in r.findings for r in records], dtype=float)
        assert roc_auc_score(y, probs[:, features.LABELS.index(name)]) >= 0.95, name
    shipped = json.loads((features.shipped_weights_dir() / features.CONFIG_FILE).read_text())
    assert min(shipped["held_out_auc"][n] for n in ("No Finding", "Cardiomegaly", "Pleural Effusion")) >= 0.95


def test_youden_operating_point_separates_where_tpr_minus_fpr_peaks() -> None:
    labels = np.array([[0], [0], [0], [0], [1], [1], [1]])
    probs = np.array([[0.1], [0.2], [0.3], [0.8], [0.6], [0.7], [0.9]])
    # J at 0.9: 1/3, at 0.8: 1/3 - 1/4, at 0.7: 2/3 - 1/4, at 0.6: 1 - 1/4 (the peak), at 0.3: 1 - 1/2
    assert features.youden_operating_points(labels, probs) == [0.6]
    assert features.youden_operating_points(np.zeros((3, 1)), np.zeros((3, 1))) == [0.5]


@pytest.mark.parametrize("change, flag", [({"diffusion_steps": 0}, "--diffusion-steps"), ({"ship_step": 6000}, "--ship-step"),
                                          ({"proportion_empty_prompts": 1.0}, "--proportion-empty-prompts")])
def test_bad_pretraining_options_name_the_flag(change: dict, flag: str) -> None:
    from hf_cxr_diffusion.errors import UserError

    with pytest.raises(UserError, match=flag):
        pretrain.PretrainBaseConfig(**change).validate()
