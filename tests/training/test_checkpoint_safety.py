"""Checkpoints hold no pickle, verify their sha256 index, and a damaged or half-saved one never breaks a resume."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from training_helpers import ConvOutOnly, tiny_config

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hashing import sha256_file
from hf_cxr_diffusion.training import checkpoints
from hf_cxr_diffusion.training.trainer import train


class _Payload:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def run_with_ema(tiny_model_dir, tiny_dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ema") / "out"
    train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, checkpointing_steps=1, use_ema=True), method=ConvOutOnly())
    return out


def test_state_files_are_safetensors_and_json_with_an_index(run_with_ema) -> None:
    ckpt = run_with_ema / "checkpoint-2"
    index = json.loads((ckpt / checkpoints.INDEX_FILE).read_text())["files"]
    assert sorted(index) == sorted(p.name for p in ckpt.iterdir() if p.name != checkpoints.INDEX_FILE)
    assert not [p for p in ckpt.iterdir() if p.suffix not in (".safetensors", ".json")]
    assert checkpoints.verify_checkpoint(ckpt) is None
    shadow = checkpoints.read_ema_shadow(ckpt)
    assert set(shadow) == {"unet.conv_out.weight", "unet.conv_out.bias"} and shadow["unet.conv_out.weight"].dtype == torch.float32


@pytest.mark.parametrize("name", ["trainable.safetensors", "optimizer.safetensors", "scheduler.json", "rng.safetensors",
                                  "ema.safetensors", "ema.json"])
def test_crafted_pickle_as_a_state_file_is_refused_and_never_runs(name, run_with_ema, tiny_model_dir, tiny_dataset_dir,
                                                                  tmp_path) -> None:
    out = tmp_path / "out"
    import shutil

    shutil.copytree(run_with_ema, out)
    ckpt = out / "checkpoint-2"
    marker = tmp_path / "pwned"
    torch.save({"state": _Payload(marker)}, ckpt / name)
    cfg = tiny_config(tiny_model_dir, tiny_dataset_dir, out, checkpointing_steps=1, use_ema=True, max_train_steps=3,
                      resume_from_checkpoint=str(ckpt))
    with pytest.raises(UserError, match=rf"checkpoint {ckpt} is damaged: {name} does not match its sha256"):
        train(cfg, method=ConvOutOnly())
    index_path = ckpt / checkpoints.INDEX_FILE  # an adversary also rewrites the index: still refused, never unpickled
    index = json.loads(index_path.read_text())
    index["files"][name] = sha256_file(ckpt / name)
    index_path.write_text(json.dumps(index))
    with pytest.raises(UserError, match=rf"checkpoint {ckpt}.*(unreadable|does not fit)"):
        train(cfg, method=ConvOutOnly())
    assert not marker.exists()


def test_latest_skips_a_damaged_checkpoint_and_a_killed_save_is_cleaned(run_with_ema, tiny_model_dir, tiny_dataset_dir,
                                                                        tmp_path, caplog) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(run_with_ema, out)
    with open(out / "checkpoint-2" / "optimizer.safetensors", "r+b") as handle:
        handle.truncate(10)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".checkpoint-3.{dead.pid}.abcd1234.tmp"
    live = out / f".checkpoint-3.{os.getppid()}.abcd1234.tmp"  # a live writer's temporary is never removed
    for folder in (stale, live):
        folder.mkdir()
        (folder / "trainable.safetensors").write_bytes(b"half")
    stale_summary = out / f".training_summary.json.{dead.pid}.0123abcd.tmp"
    not_ours = out / f".notes.txt.{dead.pid}.0123abcd.tmp"  # not an entry the trainer writes: kept
    for file in (stale_summary, not_ours):
        file.write_text("{")
    with caplog.at_level(logging.WARNING):
        result = train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, checkpointing_steps=1, use_ema=True, max_train_steps=3,
                                   resume_from_checkpoint="latest"), method=ConvOutOnly())
    assert "skipping checkpoint checkpoint-2: optimizer.safetensors does not match its sha256" in caplog.text
    assert result.summary["resumed_from_step"] == 1 and result.global_step == 3
    assert not stale.exists() and live.is_dir() and not stale_summary.exists() and not_ours.is_file()
    assert checkpoints.verify_checkpoint(out / "checkpoint-2") is None  # re-saved by the resumed run


def test_checkpoint_without_an_index_is_resumed_as_legacy_with_one_warning(run_with_ema, tiny_model_dir, tiny_dataset_dir,
                                                                            tmp_path, caplog) -> None:
    """A checkpoint saved before checkpoint_index.json existed is not skipped as damaged: it is checked for complete,
    readable state files, warned about once, and resumed; a truncated or pickled one is still skipped."""
    import shutil

    out = shutil.copytree(run_with_ema, tmp_path / "out")
    for step in (1, 2):
        (out / f"checkpoint-{step}" / checkpoints.INDEX_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        assert checkpoints.verify_checkpoint(out / "checkpoint-2") is None
        assert checkpoints.resolve_resume("latest", out) == out / "checkpoint-2"
    assert caplog.text.count(f"checkpoint {out / 'checkpoint-2'} has no {checkpoints.INDEX_FILE}") == 1
    assert "skipping" not in caplog.text
    result = train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, checkpointing_steps=1, use_ema=True, max_train_steps=3,
                               resume_from_checkpoint="latest"), method=ConvOutOnly())
    assert result.summary["resumed_from_step"] == 2 and result.global_step == 3
    assert checkpoints.verify_checkpoint(out / "checkpoint-3") is None  # new checkpoints carry the index again

    rng = out / "checkpoint-2" / "rng.safetensors"
    rng.write_bytes(rng.read_bytes()[: rng.stat().st_size // 2])
    assert checkpoints.verify_checkpoint(out / "checkpoint-2") == (
        f"{checkpoints.INDEX_FILE} is missing and rng.safetensors is unreadable (SafetensorError)")
    marker = tmp_path / "pwned"
    torch.save({"state": _Payload(marker)}, out / "checkpoint-1" / "optimizer.pt")
    assert checkpoints.verify_checkpoint(out / "checkpoint-1") == (
        f"{checkpoints.INDEX_FILE} is missing and it holds pickled state (optimizer.pt), which is never loaded")
    assert not marker.exists()
