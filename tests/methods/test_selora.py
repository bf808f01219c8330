"""SeLoRA: function-preserving expansion, Fisher-guided growth, optimizer state, resume, export."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from methods_helpers import toy_components
from torch import nn

from hf_cxr_diffusion.methods import get_method
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.methods.selora import HEATMAP_FILE, RANKS_FILE, SeLoRA, SeLoRALinear, row_generator
from hf_cxr_diffusion.methods.selora.config import LINEAR_INIT_KAIMING_A, REFERENCE_COPY_ALPHA




def _toy_task():
    """Regression onto a rank-3 linear map: a rank-1 adapter cannot fit it."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(10, 3, generator=g) @ torch.randn(3, 12, generator=g) / 12**0.5
    x = torch.randn(32, 12, generator=g)
    return x, x @ target.T


def _fit_toy(threshold: float, steps: int = 200, max_rank: int | None = None):
    torch.manual_seed(0)
    comps = toy_components()
    method = get_method(
        "selora",
        {"target_modules": ["to_q"], "train_text_encoder": False, "expansion_threshold": threshold, "expansion_interval": 20,
         "max_rank": max_rank},
    )
    method.apply(comps)
    x, y = _toy_task()

    def per_sample_losses() -> torch.Tensor:
        return (comps.unet(x) - y).pow(2).mean(dim=1)

    optimizer = torch.optim.Adam(method.param_groups(comps, 3e-3))
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        per_sample_losses().mean().backward()
        optimizer.step()
        method.after_optimizer_step(step, comps, optimizer, per_sample_losses)
    return method, comps, per_sample_losses().mean().item()


def test_ranks_grow_on_a_task_that_needs_rank_above_one():
    method, _, loss = _fit_toy(threshold=1.1)
    (rank,) = method.ranks().values()
    assert rank >= 2
    assert [h["ranks"]["unet.to_q"] for h in method.rank_history] == sorted(h["ranks"]["unet.to_q"] for h in method.rank_history)
    _, _, rank1_loss = _fit_toy(threshold=float("inf"))
    assert loss < 0.8 * rank1_loss


def test_infinite_threshold_never_grows_and_max_rank_caps():
    method, _, _ = _fit_toy(threshold=float("inf"), steps=100)
    assert all(h["ranks"]["unet.to_q"] == 1 for h in method.rank_history) and len(method.rank_history) == 6
    capped, _, _ = _fit_toy(threshold=1.0, steps=200, max_rank=2)
    assert capped.ranks()["unet.to_q"] == 2


@pytest.mark.parametrize("fisher", ["per_sample", "batch_mean"])
def test_fisher_ratio_matches_eqs_3_4_and_is_expanded_over_current(fisher):
    """FI ratio = (FI(current) + FI(trial)) / FI(current), by hand: Eq. 3's mean of per-sample squared
    gradients, or the squared gradient of the batch-mean loss (the reference copies' estimate).

    The trial's A row is random, so its zero B column gets gradient and the ratio exceeds 1
    (a zero trial row, as in the reference copies' first test, gives exactly 1).
    """
    comps = toy_components()
    method = get_method("selora", {"target_modules": ["to_q"], "train_text_encoder": False, "expansion_threshold": 1e9,
                                   "lora_alpha": 1.0, "fisher": fisher})
    method.apply(comps)
    module = method.modules["unet.to_q"]
    with torch.no_grad():
        module.lora_B[0].normal_()
    x, y = _toy_task()
    ratios = method.expand(1, None, lambda: (comps.unet(x) - y).pow(2).mean(dim=1))
    assert module.rank == 1  # threshold not reached: no growth

    a, b = module.lora_A[0].detach(), module.lora_B[0].detach()
    k = module.new_row(row_generator(0, 1, 0))  # the trial row expand() drew for module 0 at step 1
    dy = 2 / y.shape[1] * ((x @ a.T) @ b.T - y)  # d loss_i / d output_i
    grads = {  # per-sample gradients [batch, ...] of A, B and the trial column of B
        "b": dy[:, :, None] * (x @ a.T)[:, None, :],
        "a": (dy @ b)[:, :, None] * x[:, None, :],
        "trial": (dy * (x @ k.T))[:, :, None],
    }
    if fisher == "per_sample":
        fi = {n: g.pow(2).sum((1, 2)).mean() for n, g in grads.items()}
    else:
        fi = {n: g.mean(0).pow(2).sum() for n, g in grads.items()}
    current, trial = fi["a"] + fi["b"], fi["trial"]
    assert trial > 0
    assert ratios["unet.to_q"] == pytest.approx(((current + trial) / current).item(), rel=1e-4)
    per_sample_current = sum(g.pow(2).sum((1, 2)).mean() for n, g in grads.items() if n != "trial")
    batch_current = sum(g.mean(0).pow(2).sum() for n, g in grads.items() if n != "trial")
    assert per_sample_current > 1.5 * batch_current  # the two estimates really differ on this batch


def test_expansion_preserves_output_and_optimizer_state():
    comps = toy_components()
    method: SeLoRA = get_method("selora", {"target_modules": ["to_q"], "train_text_encoder": False, "expansion_threshold": 0.0})  # type: ignore[assignment]
    method.apply(comps)
    x, y = _toy_task()
    optimizer = torch.optim.Adam(method.param_groups(comps, 1e-2))
    for _ in range(3):
        optimizer.zero_grad()
        (comps.unet(x) - y).pow(2).mean().backward()
        optimizer.step()
    module = method.modules["unet.to_q"]
    old = list(module.lora_A) + list(module.lora_B)
    old_state = {id(p): {k: v.clone() for k, v in optimizer.state[p].items()} for p in old}
    with torch.no_grad():
        before = comps.unet(x)
    method.expand(4, optimizer, lambda: (comps.unet(x) - y).pow(2).mean(dim=1))
    assert module.rank == 2
    with torch.no_grad():
        torch.testing.assert_close(comps.unet(x), before, rtol=0, atol=1e-6)
    for p in old:
        assert module.lora_A[0] is old[0]
        for k, v in optimizer.state[p].items():
            assert torch.equal(v, old_state[id(p)][k])
    new = [module.lora_A[1], module.lora_B[1]]
    params = optimizer.param_groups[0]["params"]
    assert all(any(p is q for q in params) for p in new) and all(p not in optimizer.state for p in new)
    optimizer.zero_grad()
    (comps.unet(x) - y).pow(2).mean().backward()
    optimizer.step()
    assert all(optimizer.state[p]["step"] == 1 for p in new) and all(optimizer.state[p]["step"] == 4 for p in old)


def test_unet_expansion_preserves_output(components, batch, helpers):
    method = get_method("selora", {"expansion_threshold": 0.0})
    method.apply(components)
    with torch.no_grad():
        for m in method.modules.values():
            m.lora_B[0].normal_()
        before = helpers["losses"](components, batch)
    ratios = method.expand(1, None, lambda: helpers["losses"](components, batch))
    assert all(r > 1.0 for r in ratios.values()) and set(method.ranks().values()) == {2}
    with torch.no_grad():
        torch.testing.assert_close(helpers["losses"](components, batch), before, rtol=1e-6, atol=1e-7)


def test_checkpoint_resume_rebuilds_ranks(components, _loaded_components, batch, helpers):
    method = get_method("selora", {"expansion_threshold": float("inf")})
    method.apply(components)
    for i, m in enumerate(method.modules.values()):
        for _ in range(i % 3):
            m.grow(m.new_row(torch.Generator().manual_seed(i)))
    helpers["train"](method, components, batch, steps=2)
    method.rank_history.append({"step": 2, "ranks": method.ranks()})
    state = method.trainable_state_dict(components)

    resumed = get_method("selora", method.config.to_dict())
    fresh = copy.deepcopy(_loaded_components)
    resumed.apply(fresh)
    resumed.load_trainable_state_dict(fresh, state)
    assert resumed.ranks() == method.ranks() and resumed.rank_history == method.rank_history
    with torch.no_grad():
        torch.testing.assert_close(helpers["losses"](fresh, batch), helpers["losses"](components, batch))


def test_heterogeneous_ranks_export_as_ordinary_lora(components, batch, helpers, tmp_path, tiny_model_dir):
    method = get_method("selora", {"expansion_threshold": float("inf"), "lora_alpha": 0.5})
    method.apply(components)
    for i, m in enumerate(method.modules.values()):
        for _ in range(i % 4):
            m.grow(m.new_row(torch.Generator().manual_seed(i)))
    helpers["train"](method, components, batch, steps=3, lr=5e-2)
    assert set(method.ranks().values()) == {1, 2, 3, 4}
    trained = helpers["generate"](components)
    out = method.save(components, tmp_path / "out", base_model=str(tiny_model_dir))

    pipe = helpers["fresh_pipeline"](tiny_model_dir)
    assert np.abs(helpers["generate"](pipe) - trained).max() > 1e-3
    pipe.load_lora_weights(out)  # plain diffusers, no helper
    np.testing.assert_allclose(helpers["generate"](pipe), trained, atol=1e-5)
    ranks = json.loads((out / RANKS_FILE).read_text())
    assert ranks["final"] == method.ranks()
    assert (out / HEATMAP_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_adapts_every_linear_of_unet_and_text_encoder_as_the_paper(components):
    linear = {
        f"{cname}.{n}"
        for cname in ("unet", "text_encoder")
        for n, m in getattr(components, cname).named_modules()
        if isinstance(m, nn.Linear)
    }
    method = get_method("selora")
    method.apply(components)
    assert set(method.modules) == linear and len(linear) == 62  # 50 in the tiny U-Net, 12 in its text encoder
    assert method.trains("unet") and method.trains("text_encoder") and not method.trains("vae")
    assert all(isinstance(m, SeLoRALinear) and m.rank == 1 for m in method.modules.values())
    assert components.unet.get_submodule("time_embedding.linear_1") is method.modules["unet.time_embedding.linear_1"]


def test_targets_can_be_restricted(components):
    method = get_method("selora", {"target_modules": ["to_k", "to_v"], "text_encoder_target_modules": ["q_proj"]})
    method.apply(components)
    assert {n.rsplit(".", 1)[-1] for n in method.modules} == {"to_k", "to_v", "q_proj"}
    assert components.unet.get_submodule(next(iter(method.modules))[len("unet.") :]) is next(iter(method.modules.values()))


def test_targets_that_match_no_linear_layer_name_the_option(components):
    with pytest.raises(UserError, match=r"^selora: target_modules on the unet: unknown target module\(s\) \['conv1'\].*valid module names"):
        get_method("selora", {"target_modules": ["conv1"]}).apply(components)  # a Conv2d, not an nn.Linear
    with pytest.raises(UserError, match=r"^selora: text_encoder_target_modules on the text_encoder: .*\['nope'\].*'q_proj'"):
        get_method("selora", {"text_encoder_target_modules": ["nope"]}).apply(components)
    with pytest.raises(UserError, match="selora: fisher must be one of"):
        get_method("selora", {"fisher": "exact"})


@pytest.mark.parametrize("a", [0.0, LINEAR_INIT_KAIMING_A])
def test_rows_of_a_are_torch_kaiming_uniform_with_slope_a(a):
    layer = SeLoRALinear(nn.Linear(400, 3), scale=1.0, dropout=0.0, kaiming_a=a, generator=row_generator(0, 0, 0))
    expected = torch.empty(1, 400)
    torch.nn.init.kaiming_uniform_(expected, a=a, generator=row_generator(0, 0, 0))
    torch.testing.assert_close(layer.lora_A[0].detach(), expected, rtol=0, atol=0)
    bound = (6 / ((1 + a * a) * 400)) ** 0.5
    assert layer.lora_A[0].abs().max() <= bound and layer.lora_A[0].abs().max() > 0.9 * bound


def test_scale_is_lora_alpha_at_every_rank():
    base = nn.Linear(6, 5)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    deltas = {}
    for alpha in (1.0, REFERENCE_COPY_ALPHA):
        layer = SeLoRALinear(base, scale=alpha, dropout=0.0, kaiming_a=0.0, generator=row_generator(0, 0, 0))
        layer.grow(layer.new_row(row_generator(0, 1, 0)))
        with torch.no_grad():
            for b in layer.lora_B:
                b.fill_(0.5)
            deltas[alpha] = layer(x) - base(x)
    torch.testing.assert_close(deltas[REFERENCE_COPY_ALPHA], REFERENCE_COPY_ALPHA * deltas[1.0])
