"""Run identity and the output lock (runs.py) through the trainer: no run touches another's work."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from training_helpers import ConvOutOnly, tiny_config

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion import runs
from hf_cxr_diffusion.training import checkpoints
from hf_cxr_diffusion.training.trainer import train


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_foreign_run_refused_then_overwrite_replaces_only_trainer_outputs(tiny_model_dir, tiny_dataset_dir, tmp_path) -> None:
    out = tmp_path / "out"
    train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, checkpointing_steps=1), method=ConvOutOnly())
    first = runs.read_record(out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"written by a different train run .*differing: config.learning_rate, config.seed;"):
        train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, seed=1, learning_rate=1e-2, checkpointing_steps=1), method=ConvOutOnly())
    assert [p.name for p in checkpoints.list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]  # nothing touched
    assert runs.read_record(out) == first

    result = train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, seed=1, max_train_steps=1, overwrite=True), method=ConvOutOnly())
    record = runs.read_record(out)
    assert record["run_id"] != first["run_id"] and record["config"]["seed"] == 1
    assert [p.name for p in checkpoints.list_checkpoints(out)] == []  # the old run's checkpoints were the trainer's
    assert (out / "notes.txt").read_text() == "mine"  # not the trainer's: kept
    assert result.summary["steps"] == 1 and not (out / runs.LOCK_FILE).exists()


def test_concurrent_writer_refused_and_stale_lock_taken_over(tiny_model_dir, tiny_dataset_dir, tmp_path, caplog) -> None:
    out = tmp_path / "out"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = runs.OutputLock(out, "train")
        (out / runs.LOCK_FILE).write_text(json.dumps({"pid": live.pid, "host": __import__("socket").gethostname(),
                                                      "stage": "train", "started_at": "then"}))
        with pytest.raises(UserError, match=rf"is being written by train run PID {live.pid} on .*wait for it to finish"):
            train(tiny_config(tiny_model_dir, tiny_dataset_dir, out), method=ConvOutOnly())
        assert holder.holder()["pid"] == live.pid and not (out / checkpoints.STATE_FILE).exists()
    finally:
        live.kill()
        live.wait()
    dead = _dead_pid()
    (out / runs.LOCK_FILE).write_text(json.dumps({"pid": dead, "host": __import__("socket").gethostname()}))
    with caplog.at_level(logging.WARNING, logger="hf_cxr_diffusion.runs"):
        train(tiny_config(tiny_model_dir, tiny_dataset_dir, out), method=ConvOutOnly())
    assert f"taking over the stale lock {out / runs.LOCK_FILE} of PID {dead}" in caplog.text
    assert not (out / runs.LOCK_FILE).exists()


def test_resume_refuses_changed_config_and_summary_says_what_ran(tiny_model_dir, tiny_dataset_dir, tmp_path) -> None:
    out = tmp_path / "out"
    train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, checkpointing_steps=2), method=ConvOutOnly())
    with pytest.raises(UserError, match=r"trained with a different configuration: adam_beta1 \(checkpoint: 0.9, this run: 0.8\); "
                                        r"seed \(checkpoint: 0, this run: 5\)\. Only \[.*'max_train_steps'"):
        train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, seed=5, adam_beta1=0.8, max_train_steps=3,
                          resume_from_checkpoint="latest"), method=ConvOutOnly())
    with pytest.raises(UserError, match=r"is at step 2, beyond this run's 1 steps"):
        train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, max_train_steps=1, resume_from_checkpoint="latest"),
              method=ConvOutOnly())
    result = train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, max_train_steps=3, checkpointing_steps=1,
                               resume_from_checkpoint="latest"), method=ConvOutOnly())
    summary = json.loads((out / "training_summary.json").read_text())
    assert (summary["steps"], summary["steps_this_run"], summary["resumed_from_step"]) == (3, 1, 2)
    assert summary["config"]["max_train_steps"] == 3 and result.global_step == 3
    record = runs.read_record(out)
    assert len(record["resumes"]) == 1 and record["resumes"][0]["config"]["max_train_steps"] == 3


def test_latest_and_pruning_ignore_another_runs_checkpoint(tiny_model_dir, tiny_dataset_dir, tmp_path, caplog) -> None:
    other, out = tmp_path / "other", tmp_path / "out"
    train(tiny_config(tiny_model_dir, tiny_dataset_dir, other, seed=7, max_train_steps=3, checkpointing_steps=3), method=ConvOutOnly())
    train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, checkpointing_steps=1), method=ConvOutOnly())
    shutil.copytree(other / "checkpoint-3", out / "checkpoint-3")  # a user copies a foreign checkpoint in
    with caplog.at_level(logging.WARNING, logger="hf_cxr_diffusion.training.checkpoints"):
        result = train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, max_train_steps=4, checkpointing_steps=2,
                                   checkpoints_total_limit=1, resume_from_checkpoint="latest"), method=ConvOutOnly())
    assert "skipping checkpoint checkpoint-3: written by another run" in caplog.text
    assert result.summary["resumed_from_step"] == 2 and result.global_step == 4
    assert [p.name for p in checkpoints.list_checkpoints(out)] == ["checkpoint-3", "checkpoint-4"]
    assert checkpoints.read_state(out / "checkpoint-3")["config"]["seed"] == 7  # the foreign one is untouched


def test_output_inside_or_equal_to_an_input_is_refused_before_anything_is_written(tiny_model_dir, tiny_dataset_dir) -> None:
    before = sorted(p.name for p in tiny_dataset_dir.rglob("*"))
    for out, relation in ((tiny_dataset_dir / "run", "inside"), (tiny_dataset_dir, "equal to"), (tiny_model_dir, "equal to")):
        with pytest.raises(UserError, match=rf"--output-dir {out} is {relation} the input --(dataset|pretrained-model)"):
            train(tiny_config(tiny_model_dir, tiny_dataset_dir, out, overwrite=True), method=ConvOutOnly())
    assert sorted(p.name for p in tiny_dataset_dir.rglob("*")) == before


def test_lock_file_appears_with_its_holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock is created with its PID already in it (a hard link of a written temporary): a second writer starting
    at the same moment never reads an empty lock and takes it over as a dead writer's."""
    import os

    seen: list[dict] = []
    real_link = os.link

    def link_and_read(src, dst) -> None:
        real_link(src, dst)
        seen.append(json.loads(Path(dst).read_text()))

    monkeypatch.setattr(os, "link", link_and_read)
    with runs.OutputLock(tmp_path, "train"):
        assert [s["pid"] for s in seen] == [os.getpid()] and seen[0]["stage"] == "train"
        assert sorted(p.name for p in tmp_path.iterdir()) == [runs.LOCK_FILE]  # no temporary left beside it
    assert list(tmp_path.iterdir()) == []


def test_lock_temporary_of_a_killed_writer_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    """A writer killed between writing its lock temporary and linking it leaves a hidden file; the next lock removes it
    when its PID is dead and keeps a live writer's (which is about to link or unlink it)."""
    from hf_cxr_diffusion.io import temporary_of

    dead, live = _dead_pid(), subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {pid: f".{runs.LOCK_FILE}.{pid}.0123abcd.tmp" for pid in (dead, live.pid)}
        for name in names.values():
            assert temporary_of(name) == (runs.LOCK_FILE, int(name.split(".")[3]))  # named like every other temporary
            (tmp_path / name).write_text("{}")
        with runs.OutputLock(tmp_path, "train"):
            assert sorted(p.name for p in tmp_path.iterdir()) == sorted([runs.LOCK_FILE, names[live.pid]])
    finally:
        live.kill()
        live.wait()

