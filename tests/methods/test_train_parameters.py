"""Every method: exactly its declared parameters train, a few steps give a finite loss, frozen tensors stay bit-identical."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hf_cxr_diffusion.methods import get_method


def _norm_param_names(model: nn.Module, prefix: str) -> set[str]:
    return {
        f"{prefix}.{mname}.{pname}" if mname else f"{prefix}.{pname}"
        for mname, m in model.named_modules()
        if isinstance(m, nn.GroupNorm | nn.LayerNorm)
        for pname, _ in m.named_parameters(recurse=False)
    }


# method, config, component -> predicate "this parameter name must train", components that train
CASES = {
    "full-unet": ("full", {"components": ["unet"]}, lambda n, c: n.startswith("unet.")),
    "full-te-vae": ("full", {"components": ["text_encoder", "vae"], "vae_lr": 1e-3}, lambda n, c: not n.startswith("unet.")),
    "lora": ("lora", {"rank": 2, "lora_alpha": 8}, lambda n, c: n.startswith("unet.") and ".lora_" in n),
    "dora": ("dora", {"rank": 2}, lambda n, c: n.startswith("unet.") and ".lora_" in n),
    "lora-te": (
        "lora",
        {"rank": 2, "train_text_encoder": True},
        lambda n, c: n.split(".")[0] in ("unet", "text_encoder") and ".lora_" in n,
    ),
    "bitfit": ("bitfit", {}, lambda n, c: n.startswith("unet.") and n.endswith(".bias")),
    "bitfit-te": ("bitfit", {"components": ["unet", "text_encoder"]}, lambda n, c: not n.startswith("vae.") and n.endswith(".bias")),
    "difffit": (
        "difffit",
        {},
        lambda n, c: n.startswith("unet.") and (n.endswith(".bias") or n.endswith("difffit_scale.gamma") or n in c),
    ),
    "selora": (
        "selora",
        {"expansion_interval": 2, "expansion_threshold": 0.0},
        lambda n, c: n.split(".")[0] in ("unet", "text_encoder") and ".lora_" in n,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_declared_parameters_train_and_frozen_stay_identical(case, components, batch, helpers):
    name, config, should_train = CASES[case]
    method = get_method(name, config)
    method.apply(components)
    norms = _norm_param_names(components.unet, "unet")
    before = helpers["snapshot"](components)
    trainable = {
        f"{cname}.{n}"
        for cname in ("unet", "text_encoder", "vae")
        for n, p in getattr(components, cname).named_parameters()
        if p.requires_grad
    }
    assert trainable == {n for n in before if should_train(n, norms)}
    assert trainable, "a method must train something"
    for component in ("unet", "text_encoder", "vae"):
        assert method.trains(component) == any(n.startswith(f"{component}.") for n in trainable)

    losses = helpers["train"](method, components, batch, steps=2)
    assert all(math.isfinite(loss) for loss in losses)

    after = helpers["snapshot"](components)
    for key, value in before.items():
        if key not in trainable:
            assert torch.equal(value, after[key]), f"frozen tensor {key} changed"
    grads = {
        f"{cname}.{n}"
        for cname in ("unet", "text_encoder", "vae")
        for n, p in getattr(components, cname).named_parameters()
        if p.requires_grad and p.grad is not None
    }
    changed = {k for k in trainable if k in after and not torch.equal(before[k], after[k])}
    assert changed == grads & set(before)
    # everything that trains takes part in the loss, except the VAE decoder side (encode only)
    assert grads >= {k for k in trainable if not k.startswith(("vae.decoder.", "vae.post_quant_conv."))}
