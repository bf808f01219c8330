"""DiffFit: identity at init, one gamma per residual branch, scales act where documented."""

from __future__ import annotations

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D

from hf_cxr_diffusion.methods import get_method
from hf_cxr_diffusion.methods.difffit import SCALE_NAME


def _unet_out(components, batch):
    with torch.no_grad():
        latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        hidden = components.text_encoder(batch["input_ids"])[0]
        return components.unet(latents, batch["timesteps"], hidden).sample


def test_difffit_at_init_equals_base_exactly(components, batch):
    base = _unet_out(components, batch)
    method = get_method("difffit")
    method.apply(components)
    assert torch.equal(_unet_out(components, batch), base)


def test_one_gamma_per_residual_branch_and_it_scales_that_branch(components, batch):
    method = get_method("difffit")
    method.apply(components)
    unet = components.unet
    resnets = [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]
    blocks = [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
    gammas = {n: p for n, p in unet.named_parameters() if n.endswith(f"{SCALE_NAME}.gamma")}
    assert len(gammas) == len(resnets) + 3 * len(blocks)
    assert all(p.requires_grad and torch.equal(p, torch.ones_like(p)) for p in gammas.values())
    for resnet in resnets:
        assert getattr(resnet.conv2, SCALE_NAME).gamma.numel() == resnet.conv2.out_channels

    # gamma = 0 on a ResnetBlock2D removes its residual branch: the block becomes its shortcut
    resnet = resnets[0]
    x = torch.randn(1, resnet.in_channels, 8, 8)
    temb = torch.randn(1, unet.config.block_out_channels[0] * 4)
    with torch.no_grad():
        getattr(resnet.conv2, SCALE_NAME).gamma.zero_()
        shortcut = resnet.conv_shortcut(x) if resnet.conv_shortcut is not None else x
        torch.testing.assert_close(resnet(x, temb), shortcut / resnet.output_scale_factor)

    # gamma = 0 on attn1, attn2 and ff of a transformer block makes it the identity
    block = blocks[0]
    h = torch.randn(1, 16, block.norm1.normalized_shape[0])
    enc = torch.randn(1, 5, unet.config.cross_attention_dim)
    with torch.no_grad():
        for branch in (block.attn1, block.attn2, block.ff):
            getattr(branch, SCALE_NAME).gamma.zero_()
        torch.testing.assert_close(block(h, encoder_hidden_states=enc), h)


def test_difffit_trains_no_dense_weight(components):
    method = get_method("difffit")
    method.apply(components)
    dense = [
        n
        for n, m in components.unet.named_modules()
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d) and m.weight.requires_grad
    ]
    assert dense == []
    n_trainable = sum(p.numel() for p in components.unet.parameters() if p.requires_grad)
    assert n_trainable < 0.05 * sum(p.numel() for p in components.unet.parameters())
