"""Fault injection on real training runs (tiny pipeline): kill -9, damaged checkpoint files, a concurrent writer.

The same probes run over more seeds in ``bench/faults.py``.
"""

from __future__ import annotations

import logging
import shutil

import pytest
from probes import concurrent_writer, corrupt_file_then_resume, damage, reference_weights, sigkill_then_resume

from hf_cxr_diffusion import runs
from hf_cxr_diffusion.training import checkpoints


@pytest.mark.slow
def test_sigkill_at_a_random_point_then_resume_matches_the_uninterrupted_run(tiny_model_dir, tiny_dataset_dir, tmp_path) -> None:
    reference = reference_weights(tiny_model_dir, tiny_dataset_dir, tmp_path / "reference")
    outcome = sigkill_then_resume(tiny_model_dir, tiny_dataset_dir, tmp_path / "killed", reference, seed=1)
    assert outcome.recovered, outcome.detail
    assert outcome.data_lost == 0


def test_each_damaged_checkpoint_file_makes_latest_fall_back(tiny_model_dir, tiny_dataset_dir, tmp_path, caplog) -> None:
    out = tmp_path / "run"
    outcome = corrupt_file_then_resume(tiny_model_dir, tiny_dataset_dir, out, "optimizer.safetensors", "truncate")
    assert outcome.recovered and outcome.data_lost == 0, outcome.detail
    # a damaged trainer_state.json no longer says which run wrote it: the resumed run still replaces it
    outcome = corrupt_file_then_resume(tiny_model_dir, tiny_dataset_dir, tmp_path / "state", "trainer_state.json", "truncate")
    assert outcome.recovered and outcome.data_lost == 0, outcome.detail
    run_id = runs.read_record(out)["run_id"]
    names = sorted(p.name for p in (out / "checkpoint-3").iterdir())
    assert len(names) == 11  # trainable, 4 states x 2 files, trainer state, index
    for name in names:
        for how in ("truncate", "flip"):
            copy = tmp_path / f"{name}-{how}"
            shutil.copytree(out, copy)
            damage(copy / "checkpoint-3" / name, how)
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="hf_cxr_diffusion.training.checkpoints"):
                assert checkpoints.resolve_resume("latest", copy, run_id) == copy / "checkpoint-2", (name, how)
            assert "skipping checkpoint checkpoint-3" in caplog.text, (name, how)
            shutil.rmtree(copy)


@pytest.mark.slow
def test_concurrent_writer_is_refused_and_the_first_run_is_intact(tiny_model_dir, tiny_dataset_dir, tmp_path) -> None:
    outcome = concurrent_writer(tiny_model_dir, tiny_dataset_dir, tmp_path / "out")
    assert outcome.recovered, outcome.detail
    assert outcome.data_lost == 0
