"""A diffusers user's first runs: their command line trains, and a saved artefact that does not reload fails the run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from hf_cxr_diffusion.artefacts import LORA_WEIGHTS_FILE, SUMMARY_FILE, VALIDATION_DIR
from hf_cxr_diffusion.cli import main
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.methods.lora import LoRA
from hf_cxr_diffusion.training import TrainConfig, train
from hf_cxr_diffusion.training.summary import reload_check_passed
from hf_cxr_diffusion.training.validation import ReloadMismatchError


def _caption_folder(root: Path, n: int) -> Path:
    """``n`` grey 80x72 images with ``name.txt`` captions (the fine-tuning tutorial layout)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (72, 80), dtype=np.uint8)).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"Chest X-ray number {i}", encoding="utf-8")
    return root


def test_a_diffusers_command_line_trains_from_an_image_folder(tiny_model_dir, tmp_path):
    folder = _caption_folder(tmp_path / "my_xrays", 3)
    out = tmp_path / "run"
    code = main(["train", "--pretrained_model_name_or_path", str(tiny_model_dir), "--train_data_dir", str(folder),
                 "--output_dir", str(out), "--resolution", "64", "--train_batch_size", "1", "--max_train_steps", "1",
                 "--max_train_samples", "2", "--rank", "2", "--learning_rate", "1e-3", "--checkpointing_steps", "0",
                 "--validation_prompt", "Chest X-ray", "--num_validation_images", "2", "--num-validation-inference-steps",
                 "1", "--center_crop", "--seed", "3"])
    assert code == 0
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["dataset"] == str(folder) and summary["num_train_images"] == 2
    assert summary["method"] == "lora" and summary["method_config"]["rank"] == 2
    assert summary["config"]["seed"] == 3 and summary["reload_check"]["passed"]
    assert Image.open(out / VALIDATION_DIR / "final.png").size == (2 * 64, 64)  # 2 images of the one prompt
    assert not list(folder.glob("*.parquet")) and sorted(p.name for p in folder.iterdir())[:2] == ["img0.png", "img0.txt"]


class _SavesOtherWeights(LoRA):
    """LoRA whose saved file holds B doubled: the artefact no longer reproduces what trained (a writer bug)."""

    def save(self, components, output_dir, *, base_model):
        out = super().save(components, output_dir, base_model=base_model)
        path = Path(output_dir) / LORA_WEIGHTS_FILE
        state = load_file(str(path))
        save_file({k: v * 2 if "lora_B" in k or "lora.up" in k else v for k, v in state.items()}, str(path),
                  metadata=_metadata(path))
        return out


def _metadata(path: Path) -> dict[str, str] | None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return fh.metadata()


@pytest.mark.parametrize("allow", [False, True])
def test_a_failed_reload_check_fails_the_run_and_publish_refuses_it(allow, tiny_model_dir, tiny_dataset_dir, tmp_path,
                                                                    capsys):
    cfg = TrainConfig(pretrained_model=str(tiny_model_dir), dataset=str(tiny_dataset_dir), output_dir=str(tmp_path / "o"),
                      resolution=64, train_batch_size=2, max_train_steps=1, checkpointing_steps=0,
                      num_validation_inference_steps=2, allow_reload_mismatch=allow)
    method = _SavesOtherWeights(_SavesOtherWeights.config_class(init_lora_weights=False))
    if allow:
        train(cfg, method)
    else:
        with pytest.raises(ReloadMismatchError, match=r"final reload check failed: the artefact in .* max \|diff\| .*"
                                                      r"Pass --allow-reload-mismatch to keep it anyway"):
            train(cfg, method)
    summary = json.loads((tmp_path / "o" / SUMMARY_FILE).read_text())
    assert reload_check_passed(summary) is False
    assert summary["reload_check"]["allowed_mismatch"] is allow
    code = main(["publish", "adapter", str(tmp_path / "o"), "--repo-id", "org/name", "--license", "mit", "--dry-run",
                 "--export-dir", str(tmp_path / "export")])
    assert code == 2 and not (tmp_path / "export").exists()
    assert "the final reload check of its training run failed" in capsys.readouterr().err


class _SavesOneTensorOffByAnUlp(LoRA):
    """LoRA whose saved file has one value moved to the next float: the image still matches, the tensors do not."""

    def save(self, components, output_dir, *, base_model):
        import torch

        out = super().save(components, output_dir, base_model=base_model)
        path = Path(output_dir) / LORA_WEIGHTS_FILE
        state = load_file(str(path))
        key = sorted(state)[0]
        flat = state[key].reshape(-1).clone()
        flat[0] = torch.nextafter(flat[0], torch.tensor(float("inf"), dtype=flat.dtype))
        save_file({**state, key: flat.reshape(state[key].shape)}, str(path), metadata=_metadata(path))
        return out


def test_a_corrupted_saved_tensor_fails_the_reload_check_even_when_the_image_matches(tiny_model_dir, tiny_dataset_dir,
                                                                                        tmp_path):
    cfg = TrainConfig(pretrained_model=str(tiny_model_dir), dataset=str(tiny_dataset_dir), output_dir=str(tmp_path / "o"),
                      resolution=64, train_batch_size=2, max_train_steps=1, checkpointing_steps=0,
                      num_validation_inference_steps=2)
    with pytest.raises(ReloadMismatchError, match=r"1 of its \d+ trained tensors not saved bit for bit"):
        train(cfg, _SavesOneTensorOffByAnUlp())
    reload = json.loads((tmp_path / "o" / SUMMARY_FILE).read_text())["reload_check"]
    assert reload["passed"] is False and reload["tensors_mismatched"] == 1 and reload["tensors_compared"] > 1
    assert reload["max_abs_diff"] <= reload["tolerance"]  # the one-image comparison alone would have passed it


@pytest.mark.parametrize("cycle", [False, True], ids=["refcounted", "held-by-a-cycle"])
def test_the_reload_check_loads_the_artefact_after_the_trained_unet_is_gone(tiny_model_dir, tiny_dataset_dir, tmp_path,
                                                                             monkeypatch, cycle):
    import gc
    import weakref

    from hf_cxr_diffusion.training import validation

    seen: dict[str, object] = {"collections": 0}
    real_build, real_collect = validation.build_pipeline, gc.collect

    def collect(*args, **kwargs):
        seen["collections"] += 1
        return real_collect(*args, **kwargs)

    def build(base, *args, **kwargs):
        if not isinstance(base, str):  # the trained components
            seen["trained_unet"] = weakref.ref(base.unet)
            if cycle:  # only the cyclic collector can free it now
                base.unet.__dict__["_test_cycle"] = [base.unet]
            monkeypatch.setattr(gc, "collect", collect)
        else:  # the fresh base + artefact
            seen["trained_alive_at_reload"] = seen["trained_unet"]() is not None
            seen["collections_before_reload"] = seen["collections"]
        return real_build(base, *args, **kwargs)

    monkeypatch.setattr(validation, "build_pipeline", build)
    cfg = TrainConfig(pretrained_model=str(tiny_model_dir), dataset=str(tiny_dataset_dir), output_dir=str(tmp_path / "o"),
                      resolution=64, train_batch_size=2, max_train_steps=2, checkpointing_steps=1, use_ema=True,
                      validation_prompts=["Chest X-ray"], num_validation_inference_steps=2)
    result = train(cfg, keep_components=False)
    assert seen["trained_alive_at_reload"] is False and result.components is None
    # one full collection (0.3 s with these libraries imported) between training and the reload, cycle or not
    assert seen["collections_before_reload"] == 1
    reload = result.summary["reload_check"]
    assert reload["passed"] and reload["tensors_mismatched"] == 0 and reload["tensors_compared"] > 0
    assert result.summary["parameters"]["trainable"] > 0


def test_missing_metric_weights_stop_the_run_before_anything_is_written(tiny_model_dir, tiny_dataset_dir, tmp_path):
    from hf_cxr_diffusion.errors import MissingWeightsError

    cfg = TrainConfig(pretrained_model=str(tiny_model_dir), dataset=str(tiny_dataset_dir), output_dir=str(tmp_path / "o"),
                      resolution=64, max_train_steps=500, validation_metrics_steps=100, keep_best="xrv_fid",
                      metrics_weights_path=str(tmp_path / "nowhere"))
    with pytest.raises(MissingWeightsError, match=r"--validation-metrics xrv_fid,vendi \(every 100 steps\) would fail "
                                                  r"then: xrv weights .* not found at"):
        train(cfg)
    assert not (tmp_path / "o").exists()
    # a run too short to ever reach a metrics step does not need the weights (presets smoke-tested for 2 steps)
    from hf_cxr_diffusion.training.setup import check_metric_weights

    check_metric_weights(dataclasses.replace(cfg, max_train_steps=99))


def test_checkpoints_that_cannot_fit_on_the_disk_stop_the_run_at_its_start(tiny_model_dir, tiny_dataset_dir, tmp_path,
                                                                           monkeypatch):
    import shutil

    from hf_cxr_diffusion.training import setup

    cfg = TrainConfig(pretrained_model=str(tiny_model_dir), dataset=str(tiny_dataset_dir), output_dir=str(tmp_path / "o"),
                      resolution=64, train_batch_size=2, max_train_steps=10, checkpointing_steps=2,
                      checkpoints_total_limit=3, method="full")
    assert setup.planned_checkpoints(cfg, 10) == 3
    real = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(setup.shutil, "disk_usage", lambda path: real._replace(free=1_000_000))  # a nearly full disk
    with pytest.raises(UserError, match=r"GiB free, but 3 checkpoint\(s\) of about .* free disk space, raise "
                                        r"--checkpointing-steps or set --checkpoints-total-limit"):
        train(cfg)
    assert not list((tmp_path / "o").glob("checkpoint-*"))


def test_variant_weights_are_the_ones_trained_and_reload_checked(tiny_model_dir, tiny_dataset_dir, tmp_path):
    """--variant (diffusers' flag): a folder holding two weight sets; the run and its reload check use the variant."""
    import shutil

    import torch
    from diffusers import DiffusionPipeline

    from hf_cxr_diffusion.models.tiny import make_tiny_model

    base = tmp_path / "two-weight-sets"
    shutil.copytree(tiny_model_dir, base)
    other = DiffusionPipeline.from_pretrained(str(make_tiny_model(tmp_path / "seed1", seed=1, resolution=64)))
    other.save_pretrained(str(base), variant="alt")
    result = train(TrainConfig(pretrained_model=str(base), variant="alt", dataset=str(tiny_dataset_dir),
                               output_dir=str(tmp_path / "o"), resolution=64, train_batch_size=2, max_train_steps=1,
                               checkpointing_steps=0, num_validation_inference_steps=2, method="bitfit"))
    weight = result.components.vae.decoder.conv_out.weight  # frozen: still the variant's
    assert torch.equal(weight, other.vae.decoder.conv_out.weight)
    assert result.summary["reload_check"]["passed"], result.summary["reload_check"]


def test_validation_epochs_put_a_grid_at_the_end_of_each_epoch(tiny_model_dir, tiny_dataset_dir, tmp_path):
    """diffusers' --validation_epochs: 12 images / batch 4 = 3 steps per epoch, so grids at steps 3 and 6."""
    code = main(["train", "--pretrained-model", str(tiny_model_dir), "--dataset", str(tiny_dataset_dir),
                 "--output-dir", str(tmp_path / "o"), "--resolution", "64", "--train-batch-size", "4",
                 "--num-train-epochs", "2", "--validation_epochs", "1", "--validation-prompts", "Chest X-ray",
                 "--num-validation-inference-steps", "1", "--checkpointing-steps", "0", "--no-final-reload-check"])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "o" / VALIDATION_DIR).iterdir()) == [
        "final.png", "step-000003.png", "step-000006.png"]
