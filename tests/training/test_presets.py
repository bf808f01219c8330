"""The YAML presets in configs/: each follows its source (released scripts, papers) and trains on the tiny pipeline.

Training runs override model, dataset, output folder, steps, and (for CPU cost) resolution 64, batch 2,
no accumulation; DreamBooth also gets a temporary class-image folder and 2 class images (2 sampler steps).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_trainer import frozen_tensors_unchanged
from training_helpers import write_dataset

from hf_cxr_diffusion.models.loading import load_components
from hf_cxr_diffusion.training.config import load_config
from hf_cxr_diffusion.training.dreambooth import class_image_paths, ensure_class_images
from hf_cxr_diffusion.training.trainer import train

PRESETS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


#: the released paradigm-study scripts' per-component learning rates (scripts/finetune_*.sh + finetune_chexpert.py defaults)
RELEASED_FULL_LRS = {
    "paradigm-01-full-unet": {"unet": 1e-5},
    "paradigm-02-full-te": {"text_encoder": 5e-6},
    "paradigm-03-full-vae": {"vae": 1e-6},
    "paradigm-04-full-te-unet": {"text_encoder": 1e-6, "unet": 1e-5},
    "paradigm-05-full-vae-unet": {"vae": 1e-6, "unet": 1e-5},
    "paradigm-06-full-vae-te": {"vae": 1e-6, "text_encoder": 5e-6},
    "paradigm-07-full-unet-vae-te": {"unet": 1e-5, "vae": 1e-6, "text_encoder": 1e-6},
}
#: the released scripts' PEFT settings: method, U-Net learning rate, per-GPU batch, (rank, alpha, dropout)
RELEASED_PEFT = {
    "paradigm-08-lora": ("lora", 1e-4, 4, (8, 16, 0.0)),
    "paradigm-09-dora": ("dora", 1e-4, 8, (8, 16, 0.0)),
    "paradigm-10-bitfit": ("bitfit", 1e-4, 8, None),
    "paradigm-11-difffit": ("difffit", 1e-4, 8, None),
}


def test_all_paper_setups_have_a_preset() -> None:
    names = [p.stem for p in PRESETS]
    assert len([n for n in names if n.startswith("paradigm-")]) == 11
    assert {"lora-prompt2medimage", "dreambooth-sd21-pneumonia", "selora-iu-xray", "selora-iu-xray-lora",
            "selora-iu-xray-dylora", "selora-iu-xray-adalora"} <= set(names)


def _preset(name: str):
    return load_config(next(p for p in PRESETS if p.stem == name))


@pytest.mark.parametrize("name", sorted(RELEASED_FULL_LRS))
def test_paradigm_full_presets_use_the_released_per_component_learning_rates(name) -> None:
    from hf_cxr_diffusion.methods import get_method

    cfg = _preset(name)
    method = get_method(cfg.method, cfg.method_config)
    lrs = {c: getattr(method.config, f"{c}_lr") for c in method.config.components}
    assert lrs == RELEASED_FULL_LRS[name]
    assert method.config.vae_recon_weight == 1.0  # released default, used whenever the VAE trains
    assert (cfg.train_batch_size, cfg.gradient_accumulation_steps, cfg.num_train_epochs, cfg.resolution) == (4, 4, 101, 512)


@pytest.mark.parametrize("name", sorted(RELEASED_PEFT))
def test_paradigm_peft_presets_follow_the_released_scripts(name) -> None:
    cfg = _preset(name)
    method, lr, batch, lora = RELEASED_PEFT[name]
    assert (cfg.method, cfg.learning_rate, cfg.train_batch_size) == (method, lr, batch)
    if lora is not None:
        mc = cfg.method_config
        assert (mc["rank"], mc["lora_alpha"], mc["lora_dropout"]) == lora
        assert mc["target_modules"] == ["to_q", "to_k", "to_v", "to_out.0"]


def test_selora_protocol_presets_share_one_setup_and_the_papers_ranks() -> None:
    cfgs = {n: _preset(n) for n in ("selora-iu-xray", "selora-iu-xray-lora", "selora-iu-xray-dylora", "selora-iu-xray-adalora")}
    shared = {(c.pretrained_model, c.resolution, c.num_train_epochs, c.learning_rate, c.train_batch_size) for c in cfgs.values()}
    assert shared == {("runwayml/stable-diffusion-v1-5", 224, 10, 1e-4, 4)}
    for cfg in cfgs.values():
        assert cfg.method_config["target_modules"] == cfg.method_config["text_encoder_target_modules"] == "all-linear"
        assert cfg.method_config["train_text_encoder"] is True
    assert cfgs["selora-iu-xray-lora"].method_config["rank"] == cfgs["selora-iu-xray-dylora"].method_config["rank"] == 4
    ada = cfgs["selora-iu-xray-adalora"].method_config
    assert (ada["initial_rank"], ada["target_rank"]) == (6, 4)
    selora = cfgs["selora-iu-xray"].method_config
    assert (selora["expansion_threshold"], selora["expansion_interval"]) == (1.1, 40)


@pytest.fixture(scope="module")
def base_components(tiny_model_dir):
    return load_components(tiny_model_dir)


@pytest.fixture(scope="module")
def four_images(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "four", {"train": 4})


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_trains_on_the_tiny_model(preset, tiny_model_dir, four_images, base_components, tmp_path) -> None:
    steps = 2 if "adalora" in preset.stem else 1  # AdaLoRA's final allocation needs one sensitivity update before it
    overrides = dict(pretrained_model=str(tiny_model_dir), dataset=str(four_images), output_dir=str(tmp_path / "out"),
                     max_train_steps=steps, resolution=64, train_batch_size=2, gradient_accumulation_steps=1,
                     final_reload_check=False, validation_prompts=[])
    cfg = load_config(preset, overrides)
    if cfg.with_prior_preservation:
        cfg.class_data_dir, cfg.num_class_images, cfg.class_generation_steps = str(tmp_path / "class"), 2, 2
    result = train(cfg)
    assert result.global_step == steps and math.isfinite(result.final_loss)
    assert frozen_tensors_unchanged(result.components, base_components) == []
    assert (tmp_path / "out" / "cxr_method.json").is_file()
    if cfg.with_prior_preservation:
        images = class_image_paths(tmp_path / "class")
        assert len(images) == 2
        stamps = [p.stat().st_mtime_ns for p in images]
        again = ensure_class_images(base_components, tmp_path / "class", cfg.class_prompt, 2, 0, 64, 2)
        assert again == images and [p.stat().st_mtime_ns for p in again] == stamps  # generated once, reused


def test_final_reload_check_passes_with_lora_dropout(tiny_model_dir, four_images, tmp_path) -> None:
    """The Prompt2MedImage preset trains with LoRA dropout 0.05: the reloaded adapter must sample in eval mode."""
    overrides = dict(pretrained_model=str(tiny_model_dir), dataset=str(four_images), output_dir=str(tmp_path / "out"),
                     max_train_steps=2, resolution=64, train_batch_size=2, learning_rate=5e-2, validation_prompts=[],
                     final_reload_check=True, mixed_precision="no")
    cfg = load_config(next(p for p in PRESETS if p.stem == "lora-prompt2medimage"), overrides)
    assert cfg.method_config["lora_dropout"] > 0
    check = train(cfg).summary["reload_check"]
    assert check["passed"], check


def _images(folder: Path) -> torch.Tensor:
    """The training images of a dataset folder as a ``[n, 3, H, W]`` tensor in [-1, 1]."""
    import numpy as np
    from datasets import load_dataset

    images = load_dataset(str(folder), split="train")["image"]
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2).float() / 127.5 - 1


def _reconstruction_error(vae, pixels: torch.Tensor) -> float:
    with torch.no_grad():
        return torch.nn.functional.mse_loss(vae.decode(vae.encode(pixels).latent_dist.mean).sample, pixels).item()


def test_paradigm_vae_only_trains_the_decoder_changes_images_and_lowers_reconstruction_error(
    tiny_model_dir, four_images, base_components, tmp_path
) -> None:
    """Paradigm model 3 (VAE only): with the released reconstruction term every decoder tensor trains."""
    from hf_cxr_diffusion.models.loading import load_pipeline

    overrides = dict(pretrained_model=str(tiny_model_dir), dataset=str(four_images), output_dir=str(tmp_path / "out"),
                     max_train_steps=6, resolution=64, train_batch_size=2, method_config={"vae_lr": 2e-3},
                     final_reload_check=False, validation_prompts=[], mixed_precision="no")
    result = train(load_config(next(p for p in PRESETS if p.stem == "paradigm-03-full-vae"), overrides))
    trained, base = dict(result.components.vae.named_parameters()), dict(base_components.vae.named_parameters())
    decoder = [n for n in base if n.startswith(("decoder.", "post_quant_conv."))]
    changed = [n for n in decoder if not torch.equal(trained[n].detach().cpu(), base[n])]
    assert len(decoder) == 106 and changed == decoder
    pixels = _images(four_images)
    assert _reconstruction_error(result.components.vae, pixels) < 0.9 * _reconstruction_error(base_components.vae, pixels)
    images = {}
    for name, source in (("base", tiny_model_dir), ("trained", tmp_path / "out")):
        pipe = load_pipeline(source)
        images[name] = pipe("chest x-ray with a disc", num_inference_steps=2, height=64, width=64, output_type="np",
                            generator=torch.Generator().manual_seed(0)).images
    assert abs(images["trained"] - images["base"]).max() > 1e-2


def test_selora_preset_tests_expansions_on_the_trainers_per_sample_losses(tiny_model_dir, four_images, tmp_path, monkeypatch) -> None:
    """In the trainer, SeLoRA's Fisher test (Eq. 3) gets the step's per-sample losses, and modules grow."""
    from hf_cxr_diffusion.methods import get_method
    from hf_cxr_diffusion.methods.selora import method as selora_method

    shapes = []

    def recording(modules, losses_fn, estimate):
        def losses():
            out = losses_fn()
            shapes.append(tuple(out.shape))
            return out

        return fisher_scores(modules, losses, estimate)

    fisher_scores = selora_method.fisher_scores
    monkeypatch.setattr(selora_method, "fisher_scores", recording)
    overrides = dict(pretrained_model=str(tiny_model_dir), dataset=str(four_images), output_dir=str(tmp_path / "out"),
                     max_train_steps=2, resolution=64, train_batch_size=2, validation_prompts=[], final_reload_check=False,
                     method_config={"expansion_interval": 1, "expansion_threshold": 1.0})
    cfg = load_config(next(p for p in PRESETS if p.stem == "selora-iu-xray"), overrides)
    method = get_method(cfg.method, cfg.method_config)
    assert method.config.fisher == "per_sample"
    train(cfg, method=method)
    assert shapes == [(2,), (2,)]
    assert [h["step"] for h in method.rank_history] == [0, 1, 2]
    assert sum(method.rank_history[-1]["ranks"].values()) > sum(method.rank_history[0]["ranks"].values())
