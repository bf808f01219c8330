"""Saved artefacts reload on a fresh base pipeline and reproduce the trained model's images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from torch import nn

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.methods import METHOD_FILE, get_method, load_adapter

ADAPTER_CASES = {
    "lora-alpha8-r2": ("lora", {"rank": 2, "lora_alpha": 8}),
    "lora-te": ("lora", {"rank": 2, "lora_alpha": 3, "train_text_encoder": True}),
    "dora-te": ("dora", {"rank": 2, "lora_alpha": 4, "train_text_encoder": True}),
    "bitfit": ("bitfit", {"components": ["unet", "text_encoder"]}),
    "difffit": ("difffit", {}),
}


def _train_and_save(name, config, components, batch, helpers, tmp_path, tiny_model_dir):
    method = get_method(name, config)
    method.apply(components)
    helpers["train"](method, components, batch, steps=2, lr=5e-2)
    out = method.save(components, tmp_path / "out", base_model=str(tiny_model_dir))
    return method, out


@pytest.mark.parametrize("case", list(ADAPTER_CASES))
def test_adapter_round_trip_reproduces_trained_outputs(case, components, batch, helpers, tmp_path, tiny_model_dir):
    name, config = ADAPTER_CASES[case]
    base_image = helpers["generate"](components)
    method, out = _train_and_save(name, config, components, batch, helpers, tmp_path, tiny_model_dir)
    trained = helpers["generate"](components)
    assert np.abs(trained - base_image).max() > 1e-3, "training must change the images for the test to mean anything"

    info = json.loads((out / METHOD_FILE).read_text())
    assert info["method"] == name and info["base_model"] == str(tiny_model_dir)
    assert 0 < info["trainable_parameters"] < info["total_parameters"]
    assert info["config"] == method.config.to_dict()

    pipe = helpers["fresh_pipeline"](tiny_model_dir)
    if name == "lora":
        pipe.load_lora_weights(out)  # the plain diffusers call works for LoRA (U-Net and text encoder)
    else:
        load_adapter(pipe, out)  # DoRA on the text encoder needs load_adapter's fix-up (diffusers 0.42.1)
    np.testing.assert_allclose(helpers["generate"](pipe), trained, atol=1e-5)
    if name in ("lora", "dora"):  # lora_alpha != r survived through the adapter metadata
        (adapter,) = pipe.unet.peft_config
        assert pipe.unet.peft_config[adapter].lora_alpha == config["lora_alpha"] != config["rank"]
        assert pipe.unet.peft_config[adapter].use_dora == (name == "dora")


def test_full_saves_a_complete_pipeline(components, batch, helpers, tmp_path, tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    _, out = _train_and_save("full", {"components": ["unet", "text_encoder"]}, components, batch, helpers, tmp_path, tiny_model_dir)
    trained = helpers["generate"](components)
    pipe = StableDiffusionPipeline.from_pretrained(out, tokenizer=components.tokenizer, safety_checker=None)
    assert type(pipe.scheduler).__name__ == json.loads((tiny_model_dir / "model_index.json").read_text())["scheduler"][1]
    np.testing.assert_allclose(helpers["generate"](pipe), trained, atol=1e-5)
    with pytest.raises(UserError, match="from_pretrained"):
        load_adapter(helpers["fresh_pipeline"](tiny_model_dir), out)


def _other_base(tiny_model_dir, tokenizer):
    """The tiny pipeline with a differently sized U-Net (another base model)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, tokenizer=tokenizer, safety_checker=None)
    config = dict(pipe.unet.config)
    config["block_out_channels"] = (16, 32)
    config["norm_num_groups"] = 8
    pipe.unet = UNet2DConditionModel.from_config(config)
    return pipe


@pytest.mark.parametrize("name", ["lora", "bitfit"])
def test_mismatched_base_model_is_a_user_error(name, components, batch, helpers, tmp_path, tiny_model_dir):
    _, out = _train_and_save(name, {}, components, batch, helpers, tmp_path, tiny_model_dir)
    with pytest.raises(UserError, match=str(out)):
        load_adapter(_other_base(tiny_model_dir, components.tokenizer), out)


def test_unknown_target_module_lists_valid_names(components):
    with pytest.raises(UserError, match=r"unknown target module.*'to_qq'.*valid module names.*'to_k'.*'to_out.0'.*'to_q'"):
        get_method("lora", {"target_modules": ["to_q", "to_qq"]}).apply(components)
    with pytest.raises(UserError, match=r"q_proj"):
        get_method("selora", {"train_text_encoder": True, "text_encoder_target_modules": ["nope"]}).apply(components)


def test_lora_targets_can_be_any_linear_or_conv(components):
    method = get_method("lora", {"target_modules": ["proj_in", "conv1"]})
    method.apply(components)
    wrapped = {n.rsplit(".", 1)[-1] for n, m in components.unet.named_modules() if hasattr(m, "lora_A") and isinstance(m.base_layer, nn.Conv2d)}
    assert wrapped == {"proj_in", "conv1"}  # in the tiny U-Net proj_in is a 1x1 convolution


def test_load_adapter_puts_every_module_in_eval_mode_so_dropout_is_off(components, batch, helpers, tmp_path, tiny_model_dir):
    """A LoRA with dropout gives bit-identical images for the same seed after ``load_adapter``
    (peft injects its dropout layers in training mode)."""
    _, out = _train_and_save("lora", {"rank": 2, "lora_alpha": 8, "lora_dropout": 0.1, "train_text_encoder": True},
                             components, batch, helpers, tmp_path, tiny_model_dir)
    pipe = load_adapter(helpers["fresh_pipeline"](tiny_model_dir), out)
    assert not [n for c in (pipe.unet, pipe.text_encoder, pipe.vae) for n, m in c.named_modules() if m.training]
    np.testing.assert_array_equal(helpers["generate"](pipe, seed=3), helpers["generate"](pipe, seed=3))
