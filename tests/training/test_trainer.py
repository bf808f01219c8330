"""The training loop on the tiny pipeline: what trains, caching, NaN, checkpoints, validation, bad input."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import ConvOutConfig, ConvOutOnly, tiny_config, write_dataset

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.methods.base import trainable_named_parameters
from hf_cxr_diffusion.models.loading import load_components
from hf_cxr_diffusion.training import checkpoints
from hf_cxr_diffusion.training.trainer import NonFiniteLossError, train


def frozen_tensors_unchanged(components, base) -> list[str]:
    """Names of non-trainable tensors that differ from the base model (a wrapped layer's ``base_layer`` maps back)."""
    changed = []
    for cname in ("unet", "text_encoder", "vae"):
        original = getattr(base, cname).state_dict()
        trainable = {n for n, p in getattr(components, cname).named_parameters() if p.requires_grad}
        for name, tensor in getattr(components, cname).state_dict().items():
            ref = original.get(name.replace(".base_layer.", ".").replace(".base.", "."))
            if name in trainable or ref is None:  # trained, or added by the method (adapters, scales)
                continue
            if not torch.equal(tensor, ref):
                changed.append(f"{cname}.{name}")
    return changed


@pytest.mark.parametrize("method", ["test_conv_out", "lora"])
def test_exactly_the_declared_parameters_change(method, tiny_model_dir, tiny_dataset_dir, tmp_path) -> None:
    custom = ConvOutOnly() if method == "test_conv_out" else None
    result = train(tiny_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", method=method), method=custom)
    base = load_components(tiny_model_dir)
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in result.loss_history)
    assert frozen_tensors_unchanged(result.components, base) == []
    trained = trainable_named_parameters(result.components)
    assert trained
    before = {f"{c}.{n}": p for c in ("unet", "text_encoder", "vae") for n, p in getattr(base, c).named_parameters()}
    # every trainable tensor moved (LoRA's A and B included: B leaves zero at step 1, A moves at step 2)
    unchanged = [n for n, p in trained.items() if n in before and torch.equal(p.detach(), before[n])]
    assert unchanged == []
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    assert summary["parameters"]["trainable"] == sum(p.numel() for p in trained.values())
    assert summary["steps"] == 2 and summary["final_loss"] == result.final_loss
    assert summary["peak_memory"]["peak_rss_mib"] > 0
    assert (tmp_path / "out" / "loss_curve.png").stat().st_size > 0


def test_caching_does_not_change_the_loss_trajectory(tiny_model_dir, tiny_dataset_dir, tmp_path) -> None:
    runs = {}
    for cache in (True, False):
        cfg = tiny_config(tiny_model_dir, tiny_dataset_dir, tmp_path / str(cache), cache_latents=cache, max_train_steps=3,
                          snr_gamma=5.0, noise_offset=0.05, prediction_type="v_prediction")
        runs[cache] = train(cfg, method=ConvOutOnly())
    assert runs[True].summary["cached"] == {"latents": True, "text_embeddings": True}
    assert runs[False].summary["cached"] == {"latents": False, "text_embeddings": False}
    cached, direct = ([loss for _, loss in runs[c].loss_history] for c in (True, False))
    assert cached == pytest.approx(direct, rel=1e-5, abs=1e-6)
    for name, p in trainable_named_parameters(runs[True].components).items():
        torch.testing.assert_close(p, trainable_named_parameters(runs[False].components)[name], rtol=1e-4, atol=1e-6)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_model_dir, tiny_dataset_dir, tmp_path) -> None:
    out = tmp_path / "out"
    cfg = tiny_config(tiny_model_dir, tiny_dataset_dir, out, max_train_steps=6, checkpointing_steps=2)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 4 .*Last good checkpoint: checkpoint-2"):
        train(cfg, method=ConvOutOnly(ConvOutConfig(nan_at_step=3)))
    assert [p.name for p in checkpoints.list_checkpoints(out)] == ["checkpoint-2"]
    state = load_file(str(out / "checkpoint-2" / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in state.values())


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tiny_model_dir, tiny_dataset_dir, tmp_path, monkeypatch) -> None:
    import safetensors.torch

    real_save = safetensors.torch.save_file
    calls = []

    def save_file(tensors, path, *args, **kwargs):
        calls.append(path)
        if ".checkpoint-4." in path and Path(path).name == "optimizer.safetensors":  # second checkpoint: half a file, then full
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    out = tmp_path / "out"
    cfg = tiny_config(tiny_model_dir, tiny_dataset_dir, out, max_train_steps=4, checkpointing_steps=2)
    with pytest.raises(checkpoints.CheckpointWriteError, match=r"^disk full while writing \S+/checkpoint-4/optimizer.safetensors; the previous checkpoint checkpoint-2 is intact"):
        train(cfg, method=ConvOutOnly())
    assert sorted(p.name for p in out.iterdir() if p.name.startswith((".checkpoint", "checkpoint"))) == ["checkpoint-2"]
    assert checkpoints.read_state(out / "checkpoint-2")["global_step"] == 2
    assert load_file(str(out / "checkpoint-2" / "trainable.safetensors"))


def test_disk_full_while_saving_the_final_weights_names_the_intact_checkpoint(tiny_model_dir, tiny_dataset_dir, tmp_path,
                                                                               monkeypatch) -> None:
    def full(self, components, output_dir, *, base_model):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir) / "conv_out.safetensors"))

    monkeypatch.setattr(ConvOutOnly, "save", full)
    out = tmp_path / "out"
    with pytest.raises(checkpoints.CheckpointWriteError,
                       match=r"^disk full while writing \S+/conv_out.safetensors; the previous checkpoint checkpoint-2 is intact"):
        train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, checkpointing_steps=2), method=ConvOutOnly())
    assert checkpoints.verify_checkpoint(out / "checkpoint-2") is None


def test_checkpoint_limit_and_incompatible_resume(tiny_model_dir, tiny_dataset_dir, tmp_path) -> None:
    out = tmp_path / "out"
    train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, max_train_steps=3, checkpointing_steps=1, checkpoints_total_limit=2,
                      cache_latents=False),
          method=ConvOutOnly())
    assert [p.name for p in checkpoints.list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]
    with pytest.raises(UserError, match=r"incompatible with this run: method differs \(checkpoint: 'test_conv_out', this run: 'lora'\)"):
        train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, method="lora", max_train_steps=4, resume_from_checkpoint="latest"))
    with pytest.raises(UserError, match="is not a checkpoint folder"):
        train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, max_train_steps=4, resume_from_checkpoint=str(tmp_path)),
              method=ConvOutOnly())


def test_bad_inputs(tiny_model_dir, tmp_path) -> None:
    no_prompt = write_dataset(tmp_path / "noprompt", {"train": 4}, columns=("image",))
    with pytest.raises(UserError, match=r"lacks column\(s\) \['prompt'\]; columns present: \['image'\]"):
        train(tiny_config(tiny_model_dir, no_prompt, tmp_path / "o1"), method=ConvOutOnly())
    with pytest.raises(UserError, match=r"unknown fine-tuning method 'nope'; --method valid names: .*lora"):
        train(tiny_config(tiny_model_dir, no_prompt, tmp_path / "o2", method="nope"))


def test_validation_grid_metrics_keep_best_ema_and_reload_check(tiny_model_dir, tiny_dataset_dir, tmp_path) -> None:
    out = tmp_path / "out"
    cfg = tiny_config(
        tiny_model_dir, tiny_dataset_dir, out, method="lora", method_config={"rank": 2, "lora_alpha": 4}, max_train_steps=2,
        validation_prompts=["chest x-ray with a disc"], validation_steps=2,
        num_validation_inference_steps=2, validation_metrics_steps=1, validation_metrics=["vendi"],
        num_validation_metric_images=3, metrics_allow_random_weights=True, keep_best="vendi", use_ema=True,
        final_reload_check=True, lr_scheduler="cosine_annealing", lr_eta_min=1e-5, lr_warmup_steps=1,
    )
    result = train(cfg)
    summary = result.summary
    assert (out / "validation" / "step-000002.png").is_file() and (out / "validation" / "final.png").is_file()
    assert [m["step"] for m in summary["validation_metrics"]] == [1, 2]
    scores = [m["vendi"] for m in summary["validation_metrics"]]
    best = json.loads((out / "best" / "best_metric.json").read_text())
    assert best["value"] == max(scores) and best["step"] == 1 + scores.index(max(scores))
    assert checkpoints.read_state(out / "best")["global_step"] == best["step"]
    assert summary["reload_check"]["passed"], summary["reload_check"]
    assert (out / "pytorch_lora_weights.safetensors").is_file()
