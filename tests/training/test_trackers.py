"""`--report-to tensorboard`: loss, learning rate, validation grids and validation metrics in the event file."""

from __future__ import annotations

import pytest

from hf_cxr_diffusion.training import TrainConfig, train
from hf_cxr_diffusion.training.trackers import PROJECT


def test_tensorboard_event_file_holds_loss_lr_grids_and_metrics(tiny_model_dir, tiny_dataset_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(TrainConfig(pretrained_model=str(tiny_model_dir), dataset=str(tiny_dataset_dir), output_dir=str(out),
                      resolution=64, train_batch_size=2, max_train_steps=2, checkpointing_steps=0, learning_rate=1e-3,
                      validation_prompts=["Chest X-ray"], validation_steps=2, num_validation_inference_steps=1,
                      validation_metrics_steps=2, validation_metrics=["vendi"], num_validation_metric_images=4,
                      metrics_allow_random_weights=True, final_reload_check=False, report_to="tensorboard",
                      logging_dir="tb"))
    run_dir = out / "tb" / PROJECT  # (the hparams of the config go to a sub-folder)
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "validation/vendi"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert events.Scalars("train/lr")[0].value == pytest.approx(1e-3)
    assert events.Scalars("validation/vendi")[0].step == 2
    assert {"validation/step-000002", "validation/final"} <= set(tags["images"])
    grid = events.Images("validation/final")[0]
    assert (grid.width, grid.height) == (64, 64)
