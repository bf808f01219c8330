"""``--proportion-empty-prompts``: caption dropout for classifier-free guidance, on its own random stream."""

from __future__ import annotations

import pytest

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.training import TrainConfig
from hf_cxr_diffusion.training.rng import empty_prompt_mask, step_generator


def test_mask_has_the_requested_rate_and_is_seeded() -> None:
    masks = [empty_prompt_mask(0, 0, step, 8, 0.25) for step in range(500)]
    rate = sum(map(sum, masks)) / (500 * 8)
    assert abs(rate - 0.25) < 0.03
    assert masks[7] == empty_prompt_mask(0, 0, 7, 8, 0.25) and masks != [empty_prompt_mask(1, 0, s, 8, 0.25) for s in range(500)]
    assert not any(map(any, (empty_prompt_mask(0, 0, s, 8, 0.0) for s in range(50))))
    # its own stream: the objective's generator of the same micro-step is untouched by drawing the mask
    import torch

    a = torch.randn(4, generator=step_generator(0, 0, 7))
    empty_prompt_mask(0, 0, 7, 8, 0.5)
    assert torch.equal(a, torch.randn(4, generator=step_generator(0, 0, 7)))


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_out_of_range_is_refused(value: float) -> None:
    with pytest.raises(UserError, match="--proportion-empty-prompts"):
        TrainConfig(pretrained_model="m", dataset="d", output_dir="o", proportion_empty_prompts=value).validate()


@pytest.mark.parametrize("method", ["lora", "full"])  # cached text embeddings (lora) and a trained text encoder (full)
def test_training_with_empty_prompts_runs_and_changes_the_trajectory(tiny_model_dir, tiny_dataset_dir, tmp_path, method) -> None:
    from hf_cxr_diffusion.training import train

    def run(p: float, name: str):
        config = {"components": ["unet", "text_encoder"]} if method == "full" else {}
        return train(TrainConfig(pretrained_model=str(tiny_model_dir), dataset=str(tiny_dataset_dir), output_dir=str(tmp_path / name),
                                 method=method, method_config=config, resolution=64, train_batch_size=2, max_train_steps=3,
                                 checkpointing_steps=0, final_reload_check=False, proportion_empty_prompts=p))

    dropped, plain = run(0.5, "dropped"), run(0.0, "plain")
    assert len(dropped.loss_history) == 3 and dropped.loss_history != plain.loss_history
