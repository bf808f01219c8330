"""TrainerState's JSON round trip and the epoch plan (batches, accumulation windows, steps)."""

from __future__ import annotations

import json

import pytest

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.training.config import TrainConfig
from hf_cxr_diffusion.training.setup import EpochPlan
from hf_cxr_diffusion.training.state import TrainerState


def test_state_round_trips_through_json_and_ignores_identity_keys() -> None:
    state = TrainerState()
    for b in range(3):
        state.finish_step(micro_step=2 * (b + 1), loss=0.1 * b + 1 / 3, epoch=0, batch=b, batches_per_epoch=3, seconds=0.5)
    state.metric_history.append({"step": 3, "vendi": 1.25})
    state.best = {"metric": "vendi", "value": 1.25, "step": 3}
    text = json.dumps({**state.to_json(), "method": "lora", "model_fingerprint": "abc"})
    again = TrainerState.from_json(json.loads(text))
    assert again == state
    assert (again.global_step, again.epoch, again.next_batch, again.micro_step) == (3, 1, 0, 6)
    assert again.epoch_seconds == {0: 1.5} and again.final_loss == state.loss_history[-1][1]


def test_epoch_plan_windows_and_steps() -> None:
    cfg = TrainConfig(train_batch_size=2, gradient_accumulation_steps=2, num_train_epochs=3)
    plan = EpochPlan.build(cfg, num_images=11, world=1)  # 5 batches: windows [0,1] [2,3] [4]
    assert (plan.per_rank, plan.batches_per_epoch, plan.total_steps, plan.num_epochs) == (11, 5, 9, 3)
    assert [plan.window(b, 2) for b in range(5)] == [(2, False), (2, True), (2, False), (2, True), (1, True)]
    two = EpochPlan.build(TrainConfig(train_batch_size=2, max_train_steps=7), num_images=11, world=2)
    assert (two.per_rank, two.batches_per_epoch, two.total_steps, two.num_epochs) == (5, 2, 7, 4)
    with pytest.raises(UserError, match="fewer than --train-batch-size 4 x 2 process"):
        EpochPlan.build(TrainConfig(train_batch_size=4), num_images=7, world=2)
