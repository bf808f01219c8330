"""DyLoRA (Valipour et al. 2023): per-step rank truncation (Eq. 5), nested ranks, exact resume, truncated export."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors import safe_open
from methods_helpers import toy_components

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.methods import get_method
from hf_cxr_diffusion.methods.dylora import DyLoRALinear
from hf_cxr_diffusion.artefacts import LORA_WEIGHTS_FILE




def _toy(config: dict) -> tuple:
    comps = toy_components()
    method = get_method("dylora", {"target_modules": ["to_q"], "train_text_encoder": False, **config})
    method.apply(comps)
    return method, comps


def test_training_forward_is_the_truncated_update_scaled_by_alpha_over_b():
    method, comps = _toy({"rank": 4, "lora_alpha": 6.0})
    layer = method.modules["unet.to_q"]
    with torch.no_grad():
        layer.lora_B.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(2))
    for b in (1, 3, 4):
        layer.active_rank = b
        expected = 6.0 / b * x @ layer.lora_A[:b].T @ layer.lora_B[:, :b].T
        torch.testing.assert_close(comps.unet(x), expected)
    layer.eval()  # eval mode uses the exported rank (default: the full rank), whatever was drawn last
    layer.active_rank = 1
    torch.testing.assert_close(comps.unet(x), 6.0 / 4 * x @ layer.lora_A.T @ layer.lora_B.T)


@pytest.mark.parametrize("frozen", [False, True])
def test_gradient_reaches_the_first_b_ranks_or_only_the_b_th(frozen):
    method, comps = _toy({"rank": 4, "frozen": frozen})
    layer = method.modules["unet.to_q"]
    with torch.no_grad():
        layer.lora_B.fill_(0.1)
    layer.active_rank = 3
    comps.unet(torch.randn(5, 12)).pow(2).sum().backward()
    rows_with_grad = [i for i in range(4) if layer.lora_A.grad[i].abs().sum() > 0]
    cols_with_grad = [i for i in range(4) if layer.lora_B.grad[:, i].abs().sum() > 0]
    assert rows_with_grad == cols_with_grad == ([2] if frozen else [0, 1, 2])


def test_ranks_are_drawn_per_step_uniformly_and_reproducibly():
    method, _ = _toy({"rank": 4, "min_rank": 2})
    draws = [method.sampled_rank(s) for s in range(1, 401)]
    assert set(draws) == {2, 3, 4} and all(abs(draws.count(b) - 133) < 40 for b in (2, 3, 4))
    assert draws == [_toy({"rank": 4, "min_rank": 2})[0].sampled_rank(s) for s in range(1, 401)]
    assert draws != [_toy({"rank": 4, "min_rank": 2, "seed": 1})[0].sampled_rank(s) for s in range(1, 401)]
    method.after_optimizer_step(7, None, None, lambda: torch.zeros(1))
    assert method.modules["unet.to_q"].active_rank == method.sampled_rank(8)


def _fit(method, comps, steps: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.randn(10, 3, generator=g) @ torch.randn(3, 12, generator=g) / 12**0.5
    x = torch.randn(64, 12, generator=g)
    optimizer = torch.optim.Adam(method.param_groups(comps, 1e-2))
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        (comps.unet(x) - x @ target.T).pow(2).mean().backward()
        optimizer.step()
        method.after_optimizer_step(step, comps, optimizer, lambda: torch.zeros(1))
    return x, x @ target.T


def _truncated_losses(layer: DyLoRALinear, comps, x, y) -> list[float]:
    layer.eval()
    losses = []
    for b in range(1, 5):
        layer.eval_rank = b
        with torch.no_grad():
            losses.append((comps.unet(x) - y).pow(2).mean().item())
    return losses


def test_nested_dropout_orders_the_ranks_unlike_plain_lora():
    """Trained on a rank-3 target, DyLoRA truncated to rank b improves with every b and its low ranks carry
    the main directions; a LoRA of the same rank trained without truncation (min_rank = rank) fits at
    full rank but is much worse truncated. (With Eq. 5's alpha / b scale no single set of rows is
    optimal at every b, so DyLoRA's full-rank fit is not exact.)"""
    dy, comps = _toy({"rank": 4, "lora_alpha": 4.0})
    x, y = _fit(dy, comps)
    dylora = _truncated_losses(dy.modules["unet.to_q"], comps, x, y)
    plain, plain_comps = _toy({"rank": 4, "min_rank": 4, "lora_alpha": 4.0})
    _fit(plain, plain_comps)
    lora = _truncated_losses(plain.modules["unet.to_q"], plain_comps, x, y)
    assert dylora == sorted(dylora, reverse=True)  # every extra rank helps
    assert lora[3] < 1e-3 and dylora[3] < 0.3 * dylora[0]
    assert dylora[0] < 0.5 * lora[0] and dylora[1] < 0.75 * lora[1]  # only DyLoRA's low ranks carry the main directions


def test_checkpoint_resumes_the_rank_sequence(components, _loaded_components, batch, helpers):
    method = get_method("dylora", {"rank": 3})
    method.apply(components)
    helpers["train"](method, components, batch, steps=3)
    state = method.trainable_state_dict(components)
    resumed = get_method("dylora", method.config.to_dict())
    fresh = copy.deepcopy(_loaded_components)
    resumed.apply(fresh)
    resumed.load_trainable_state_dict(fresh, state)
    assert resumed.next_step == 4 and {m.active_rank for m in resumed.modules.values()} == {method.sampled_rank(4)}
    with torch.no_grad():
        torch.testing.assert_close(helpers["losses"](fresh, batch), helpers["losses"](components, batch))
    with pytest.raises(UserError, match="dylora.next_step"):
        resumed.load_trainable_state_dict(fresh, {k: v for k, v in state.items() if k != "dylora.next_step"})


def test_export_is_a_plain_lora_truncated_to_the_chosen_rank(components, batch, helpers, tmp_path, tiny_model_dir):
    method = get_method("dylora", {"rank": 4, "export_rank": 2, "lora_alpha": 3.0})
    method.apply(components)
    helpers["train"](method, components, batch, steps=3, lr=5e-2)
    trained = helpers["generate"](components)  # eval mode: rank 2
    out = method.save(components, tmp_path / "out", base_model=str(tiny_model_dir))
    with safe_open(str(out / LORA_WEIGHTS_FILE), "pt") as fh:
        a_shapes = {fh.get_slice(k).get_shape()[0] for k in fh.keys() if "lora_A" in k or "lora.down" in k}
    assert a_shapes == {2}
    pipe = helpers["fresh_pipeline"](tiny_model_dir)
    assert np.abs(helpers["generate"](pipe) - trained).max() > 1e-3
    pipe.load_lora_weights(out)  # plain diffusers
    np.testing.assert_allclose(helpers["generate"](pipe), trained, atol=1e-5)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"rank": 0}, r"^dylora: rank must be >= 1, got 0$"),
        ({"rank": 4, "min_rank": 5}, r"^dylora: min_rank must be in \[1, rank=4\]"),
        ({"rank": 4, "export_rank": 6}, r"^dylora: export_rank must be in \[min_rank=1, rank=4\]"),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_option(config, message):
    with pytest.raises(UserError, match=message):
        get_method("dylora", config)
