"""The two method hooks of the loop: ``auxiliary_loss`` (VAE terms) and ``after_optimizer_step``'s per-sample ``loss_fn``."""

from __future__ import annotations

import pytest
import torch
from test_trainer import tiny_config
from training_helpers import DecoderConfig, DecoderOnly, RecordingConvOut

from hf_cxr_diffusion.models.loading import load_components
from hf_cxr_diffusion.training.caching import encode_posterior
from hf_cxr_diffusion.training.data import load_training_data
from hf_cxr_diffusion.training.rng import epoch_permutation, step_generator
from hf_cxr_diffusion.training.trainer import train


def test_loss_fn_returns_the_per_sample_losses_of_the_steps_micro_batch(tiny_model_dir, tiny_dataset_dir, tmp_path) -> None:
    # lr 0: the weights do not move, so loss_fn() after the step sees the step's own model and draws
    method = RecordingConvOut()
    result = train(tiny_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", learning_rate=0.0, max_train_steps=3,
                               train_batch_size=3), method=method)
    assert [tuple(t.shape) for t in method.hook_losses] == [(3,)] * 3
    for recorded, (_, step_loss) in zip(method.hook_losses, result.loss_history, strict=True):
        assert recorded.mean().item() == pytest.approx(step_loss, rel=1e-6)
    assert len({round(float(t[0]), 6) for t in method.hook_losses}) == 3  # a new micro-batch (and draws) per step


def test_auxiliary_loss_gets_the_vae_inputs_and_the_latents_of_the_diffusion_loss(tiny_model_dir, tiny_dataset_dir, tmp_path) -> None:
    method = DecoderOnly()
    cfg = tiny_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "aux", max_train_steps=2, seed=5)
    result = train(cfg, method=method)
    assert len(method.calls) == 2 and result.summary["cached"]["latents"] is False

    # what the first micro-batch must have seen: the images of epoch 0's first batch, and the posterior
    # draw of micro-step 0 (the first draw of its generator), from the untouched base VAE
    base = load_components(tiny_model_dir)
    data = load_training_data(str(tiny_dataset_dir), "train", 64, "image", "prompt")
    indices = epoch_permutation(5, 0, len(data))[:2]
    pixels = data.pixels(indices)
    with torch.no_grad():
        mean, std = encode_posterior(base.vae, pixels)
    draw = torch.randn(mean.shape, generator=step_generator(5, 0, 0))
    first = method.calls[0]
    assert first["pixels"].min() >= -1 and first["pixels"].max() <= 1
    torch.testing.assert_close(first["pixels"], pixels)
    torch.testing.assert_close(first["latents"], mean + std * draw)

    # the term is added to the loss: step 1 (same initial weights) differs by exactly the term
    plain = train(tiny_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "plain", max_train_steps=2, seed=5),
                  method=DecoderOnly(DecoderConfig(recon_weight=None)))
    assert result.loss_history[0][1] - plain.loss_history[0][1] == pytest.approx(float(first["term"]), rel=1e-5)
    # and only the term trains the decoder: without it the decoder gets no gradient
    key = "decoder.conv_out.weight"
    assert not torch.equal(result.components.vae.state_dict()[key], base.vae.state_dict()[key])
    assert torch.equal(plain.components.vae.state_dict()[key], base.vae.state_dict()[key])
