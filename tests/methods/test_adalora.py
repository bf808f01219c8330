"""AdaLoRA through peft: the budget reaches the target average rank, the export is a plain LoRA with the final ranks."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.methods import get_method

SCHEDULE = {"total_step": 6, "tinit": 1, "tfinal": 2, "delta_t": 1}


def _train(method, components, batch, helpers, steps: int, lr: float = 2e-2, start: int = 1) -> None:
    optimizer = torch.optim.AdamW(method.param_groups(components, lr))
    for step in range(start, start + steps):
        optimizer.zero_grad()
        (helpers["losses"](components, batch).mean() + method.auxiliary_loss(components, None, None)).backward()
        optimizer.step()
        method.after_optimizer_step(step, components, optimizer, lambda: helpers["losses"](components, batch))


def test_defaults_are_the_selora_papers_baseline_on_every_linear(components):
    linear = {f"{c}.{n}" for c in ("unet", "text_encoder") for n, m in getattr(components, c).named_modules() if isinstance(m, nn.Linear)}
    method = get_method("adalora", {"total_step": 10})
    method.apply(components)
    ranks = method.ranks()
    assert set(ranks) == linear and len(linear) == 62 and set(ranks.values()) == {6}
    assert method.allocator.init_bgt == 6 * 62 and method.allocator.target_bgt == 4 * 62
    assert method.trains("unet") and method.trains("text_encoder") and not method.trains("vae")


def test_pruning_reaches_the_target_budget_and_the_export_reloads_with_plain_diffusers(
    components, batch, helpers, tmp_path, tiny_model_dir
):
    method = get_method("adalora", SCHEDULE)
    method.apply(components)
    _train(method, components, batch, helpers, steps=6)
    ranks = method.ranks()
    assert sum(ranks.values()) == 4 * len(ranks)  # the average rank is exactly the target
    assert max(ranks.values()) <= 6 and len(set(ranks.values())) > 1  # and it is allocated unevenly
    trained = helpers["generate"](components)
    out = method.save(components, tmp_path / "out", base_model=str(tiny_model_dir))
    pipe = helpers["fresh_pipeline"](tiny_model_dir)
    assert np.abs(helpers["generate"](pipe) - trained).max() > 1e-3
    pipe.load_lora_weights(out)
    np.testing.assert_allclose(helpers["generate"](pipe), trained, atol=1e-5)
    exported = {k: c.rank_pattern for k, c in (("unet", pipe.unet.peft_config), ("te", pipe.text_encoder.peft_config)) for c in c.values()}
    exported_ranks = sorted([*exported["unet"].values(), *exported["te"].values()])
    assert exported_ranks == sorted(r for r in ranks.values() if r > 0)


def test_checkpoint_restores_the_schedules_state(components, _loaded_components, batch, helpers):
    part = get_method("adalora", SCHEDULE)
    part.apply(components)
    _train(part, components, batch, helpers, steps=3)
    state = part.trainable_state_dict(components)
    resumed = get_method("adalora", SCHEDULE)
    fresh = copy.deepcopy(_loaded_components)
    resumed.apply(fresh)
    resumed.load_trainable_state_dict(fresh, state)
    for key in ("exp_avg_ipt", "exp_avg_unc"):
        for name, value in getattr(part.allocator, key).items():
            torch.testing.assert_close(getattr(resumed.allocator, key)[name], value)
    assert resumed.ranks() == part.ranks() and any(r < 6 for r in part.ranks().values())  # step 3 already pruned
    torch.testing.assert_close(helpers["losses"](fresh, batch), helpers["losses"](components, batch))


def test_orthogonality_regulariser_matches_peft():
    """peft adds Eq. 4's regulariser to ``outputs.loss``; ours must give the same number on the same factors."""
    from peft import AdaLoraConfig, get_peft_model

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.to_q = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> SimpleNamespace:
            return SimpleNamespace(loss=self.to_q(x).sum() * 0)

    torch.manual_seed(0)
    peft_model = get_peft_model(Net(), AdaLoraConfig(init_r=6, target_r=4, total_step=10, target_modules=["to_q"], orth_reg_weight=0.3))
    reference = peft_model.base_model(torch.randn(2, 8)).loss  # AdaLoraModel.forward adds the regulariser
    components = type("C", (), {})()
    components.unet, components.text_encoder, components.vae = Net(), nn.Identity(), nn.Identity()
    method = get_method("adalora", {"target_modules": ["to_q"], "train_text_encoder": False, "total_step": 10, "orth_reg_weight": 0.3})
    method.apply(components)
    with torch.no_grad():
        for name, p in components.unet.named_parameters():
            p.copy_(dict(peft_model.base_model.model.named_parameters())[name])
    torch.testing.assert_close(method.auxiliary_loss(components, None, None), reference)


def test_needs_the_steps_gradients():
    components = type("C", (), {})()
    components.unet, components.text_encoder, components.vae = nn.Sequential(nn.Linear(4, 4)), nn.Identity(), nn.Identity()
    method = get_method("adalora", {"target_modules": ["0"], "train_text_encoder": False})
    method.apply(components)
    with pytest.raises(RuntimeError, match="total_step is unknown"):
        method.after_optimizer_step(1, components, None, lambda: torch.zeros(1))
    method.begin_training(10)
    with pytest.raises(RuntimeError, match="before zero_grad"):
        method.after_optimizer_step(1, components, None, lambda: torch.zeros(1))
    with pytest.raises(UserError, match=r"adalora: tinit \(5\) \+ tfinal \(5\) leave no pruning phase in 10 steps"):
        get_method("adalora", {"tinit": 5, "tfinal": 5}).begin_training(10)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"initial_rank": 6, "target_rank": 7}, r"^adalora: target_rank must be in \[1, initial_rank=6\] \(AdaLoRA only prunes\), got 7$"),
        ({"initial_rank": 0}, r"^adalora: initial_rank must be >= 1"),
        ({"delta_t": 0}, r"^adalora: delta_t must be >= 1"),
        ({"total_step": 3, "tinit": 2, "tfinal": 1}, r"^adalora: tinit \(2\) \+ tfinal \(1\) leave no pruning phase in 3 steps"),
        # the final allocation needs one sensitivity update before it (peft skips it on that step)
        ({"total_step": 1}, r"^adalora: tinit \(0\) \+ tfinal \(0\) leave no pruning phase in 1 steps"),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_option(config, message):
    with pytest.raises(UserError, match=message):
        get_method("adalora", config)
