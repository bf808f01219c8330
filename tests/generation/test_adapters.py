"""Every artefact the trainer saves (methods' ``save``) generates through ``--adapter``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from artefact_makers import PHANTOM_PROMPT, train_tiny
from PIL import Image

from hf_cxr_diffusion.artefacts import ArtefactKind, read_training_output
from hf_cxr_diffusion.generation import generate
from hf_cxr_diffusion.generation.prompts import PromptItem, PromptPlan

PLAN = PromptPlan((PromptItem("chest x-ray"),), ())
OPTS = dict(scheduler="dpm", steps=2, seed=3)


@pytest.fixture(scope="module")
def base_image(tiny_model_dir, tmp_path_factory) -> np.ndarray:
    out = generate(tiny_model_dir, PLAN, tmp_path_factory.mktemp("gen") / "base", **OPTS)
    return np.asarray(Image.open(out / "images" / "000000.png"))


KINDS = [("bitfit", ArtefactKind.TENSORS), ("difffit", ArtefactKind.TENSORS), ("dora", ArtefactKind.LORA),
         ("full", ArtefactKind.PIPELINE)]


@pytest.mark.parametrize(("method", "kind"), KINDS)
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
    info = read_training_output(adapter)
    assert (info.kind, info.method) == (kind, method)
    out = generate(tiny_model_dir, PLAN, tmp_path / "out", adapter=adapter, **OPTS)
    image = np.asarray(Image.open(out / "images" / "000000.png"))
    assert not np.array_equal(image, base_image)  # the adapter was applied
    config = json.loads((out / "generation_config.json").read_text())
    assert (config["adapter_method"], config["adapter_sha256"], config["base_model"]) == (method, info.sha256, str(tiny_model_dir))


def _in_memory_image(components, prompt: str, seed: int) -> np.ndarray:
    """The image the trained components themselves make (no save / reload), as the generator samples it."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer, unet=components.unet,
        scheduler=DDIMScheduler.from_config(components.noise_scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    for module in (pipe.unet, pipe.text_encoder, pipe.vae):
        module.eval()
    with torch.no_grad():
        image = pipe(prompt, num_inference_steps=2, guidance_scale=4.0, generator=torch.Generator("cpu").manual_seed(seed),
                     height=64, width=64, output_type="pil").images[0]
    return np.asarray(image.convert("L"))


def test_dora_with_text_encoder_generates_what_was_trained(dora_te_run, tiny_model_dir, tmp_path) -> None:
    """diffusers 0.42.1's load_lora_weights drops the text encoder's DoRA magnitudes; generate must not."""
    plan = PromptPlan((PromptItem(PHANTOM_PROMPT),), ())
    out = generate(tiny_model_dir, plan, tmp_path / "dora", adapter=dora_te_run.output_dir, scheduler="ddim", steps=2, seed=5)
    generated = np.asarray(Image.open(out / "images" / "000000.png"))
    expected = _in_memory_image(dora_te_run.components, plan.items[0].prompt, seed=5)
    np.testing.assert_array_equal(generated, expected)


def test_lora_dropout_is_off_when_sampling(tiny_model_dir, phantom_dataset_dir, tmp_path) -> None:
    """A LoRA trained with dropout 0.1 gives bit-identical images for the same seed, run after run."""
    run = train_tiny(tiny_model_dir, phantom_dataset_dir, tmp_path / "run", "lora",
                     {"init_lora_weights": False, "lora_dropout": 0.1}, checkpointing_steps=0, validation_prompts=[])
    plan = PromptPlan((PromptItem(PHANTOM_PROMPT),) * 2, ())
    images = [np.asarray(Image.open(generate(tiny_model_dir, plan, tmp_path / f"g{k}", adapter=run.output_dir,
                                             scheduler="ddim", steps=2, seed=1) / "images" / "000000.png"))
              for k in range(2)]
    np.testing.assert_array_equal(images[0], images[1])
