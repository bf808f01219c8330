"""The trainer's fast paths do not change the maths: fused/foreach AdamW, SDPA attention, one text encoding per
distinct prompt (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_helpers import ConvOutOnly, tiny_config

from hf_cxr_diffusion.training.config import TrainConfig
from hf_cxr_diffusion.training.optim import build_optimizer, multi_tensor_kwargs
from hf_cxr_diffusion.training.trainer import train


def _adamw_trajectory(make, steps: int = 25) -> list[torch.Tensor]:
    """Parameters of two groups (different lr and weight decay) after ``steps`` updates with the same gradients."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 8), (8, 4), (16,), (3, 3, 2, 2)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    optimizer = make([{"params": params[:2], "lr": 1e-2}, {"params": params[2:], "lr": 3e-3, "weight_decay": 0.0}])
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in params]


def test_fused_adamw_equals_the_per_tensor_loop() -> None:
    cfg = TrainConfig(pretrained_model="m", dataset="d", output_dir="o", adam_weight_decay=0.01)
    built, name = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1e-3}], cfg)
    assert name == "AdamW (fused)" and built.defaults["fused"] is True  # CPU has the fused kernel (torch >= 2.4)

    kwargs = dict(betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon, weight_decay=cfg.adam_weight_decay)
    loop = _adamw_trajectory(lambda groups: torch.optim.AdamW(groups, foreach=False, **kwargs))
    fast = _adamw_trajectory(lambda groups: build_optimizer(groups, cfg)[0])
    foreach = _adamw_trajectory(lambda groups: torch.optim.AdamW(groups, foreach=True, **kwargs))
    moved = max(float((a - b).abs().max()) for a, b in zip(loop, _adamw_trajectory(lambda g: torch.optim.SGD(g, lr=0.0))))
    assert moved > 0.05  # the updates are large enough for a wrong one to show
    for a, b, c in zip(loop, fast, foreach):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(c, a, rtol=1e-6, atol=1e-7)


def test_multi_tensor_path_falls_back_to_foreach_without_a_fused_kernel() -> None:
    assert multi_tensor_kwargs([torch.zeros(2)]) == {"fused": True}
    assert multi_tensor_kwargs([torch.zeros(2), torch.zeros(2, device="meta")]) == {"foreach": True}
    assert multi_tensor_kwargs([torch.zeros(2, dtype=torch.int64)]) == {"foreach": True}


class _Spy(ConvOutOnly):
    """ConvOutOnly that counts the text encoder's encoded rows and the U-Net's SDPA calls."""

    def apply(self, components) -> None:
        super().apply(components)
        self.encoded_rows = 0

        def count(module, args, kwargs):
            ids = args[0] if args else kwargs["input_ids"]
            self.encoded_rows += ids.shape[0]

        components.text_encoder.register_forward_pre_hook(count, with_kwargs=True)


def test_text_encoder_runs_once_per_distinct_prompt(tiny_model_dir: Path, tiny_dataset_dir: Path, tmp_path: Path) -> None:
    spy = _Spy()
    result = train(tiny_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "o", max_train_steps=6), method=spy)
    assert result.summary["cached"]["text_embeddings"]
    # 6 steps x 2 images = the 12 training images, written with 4 distinct prompts
    assert spy.encoded_rows == 4


def test_training_attention_runs_through_sdpa(tiny_model_dir: Path, tiny_dataset_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    result = train(tiny_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "o", max_train_steps=1), method=ConvOutOnly())
    attention = [m for m in result.components.unet.modules() if isinstance(m, Attention)]
    assert attention and all(type(m.processor) is AttnProcessor2_0 for m in attention)
    assert len(calls) >= len(attention)  # every U-Net attention layer of the step's forward went through SDPA



def _counting_syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the number of losses each host copy of the trainer carries."""
    from hf_cxr_diffusion.training import distributed

    sizes: list[int] = []
    mean = distributed.mean_over_processes

    def counting(values, world):
        sizes.append(values.numel())
        return mean(values, world)

    monkeypatch.setattr(distributed, "mean_over_processes", counting)
    return sizes


def test_deferred_loss_sync_keeps_the_loss_history_bit_exact(tiny_model_dir: Path, tiny_dataset_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from hf_cxr_diffusion.training import trainer

    histories, syncs, sizes = {}, {}, _counting_syncs(monkeypatch)
    for every in (1, 4):
        monkeypatch.setattr(trainer, "LOSS_SYNC_STEPS", every)
        cfg = tiny_config(tiny_model_dir, tiny_dataset_dir, tmp_path / str(every), method="lora", max_train_steps=5,
                          gradient_accumulation_steps=2)
        sizes.clear()
        histories[every], syncs[every] = train(cfg).loss_history, list(sizes)
    assert histories[4] == histories[1] and len(histories[1]) == 5
    assert all(0 < loss < 10 for _, loss in histories[4])  # no placeholder left
    assert syncs[1] == [2] * 5  # one copy per step of its two micro-batch losses
    assert syncs[4] == [8, 2]  # steps 1-4 together, then the last step


def test_a_nan_found_at_a_deferred_sync_names_its_step_and_saves_no_later_checkpoint(
        tiny_model_dir: Path, tiny_dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    from hf_cxr_diffusion.training import checkpoints
    from hf_cxr_diffusion.training.loss import NonFiniteLossError
    from hf_cxr_diffusion.training.objective import Objective

    loss = Objective.loss
    monkeypatch.setattr(Objective, "loss", lambda self, indices, micro: loss(self, indices, micro) * (
        float("nan") if micro == 5 else 1.0))
    out = tmp_path / "out"
    cfg = tiny_config(tiny_model_dir, tiny_dataset_dir, out, method="lora", max_train_steps=12, checkpointing_steps=4)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 6 \(epoch 0, batch 5\).*Last good checkpoint: checkpoint-4"):
        train(cfg)
    assert [p.name for p in checkpoints.list_checkpoints(out)] == ["checkpoint-4"]
    assert all(torch.isfinite(t).all() for t in load_file(str(out / "checkpoint-4" / "trainable.safetensors")).values())
