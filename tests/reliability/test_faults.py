"""Fault injection on real runs: kill -9 of train / generate / prepare, damaged checkpoint files, a concurrent writer.

The same probes run over more seeds in ``bench/faults.py``.
"""

from __future__ import annotations

import logging
import shutil

import pytest
from probes import (
    concurrent_writer,
    corrupt_file_then_resume,
    damage,
    generate_argv,
    generate_sigkill_then_resume,
    prepare_argv,
    prepare_sigkill_then_rerun,
    reference_weights,
    run_in_process,
    sigkill_then_resume,
)

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


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("".join(f"chest x-ray, view {i}\n" for i in range(40)))
    return path


@pytest.mark.slow
def test_sigkill_of_generate_then_rerun_gives_the_uninterrupted_files(tiny_model_dir, prompts_file, tmp_path) -> None:
    reference = run_in_process(generate_argv(tiny_model_dir, prompts_file, tmp_path / "reference"))
    outcome = generate_sigkill_then_resume(tiny_model_dir, prompts_file, tmp_path / "killed", reference, seed=0)
    assert outcome.recovered, outcome.detail
    assert outcome.data_lost == 0


@pytest.mark.slow
def test_sigkill_of_prepare_then_rerun_gives_the_uninterrupted_folder(tmp_path) -> None:
    from hf_cxr_diffusion.phantoms.corpus import make_phantoms

    corpus = make_phantoms(tmp_path / "corpus", layout="pneumonia", n=300, seed=0, resolution=128)
    reference = run_in_process(prepare_argv(corpus, tmp_path / "reference" / "prepared"))
    for over_previous in (False, True):
        out = tmp_path / f"killed-{over_previous}" / "prepared"
        out.parent.mkdir()
        outcome = prepare_sigkill_then_rerun(corpus, out, reference, seed=1, over_previous=over_previous)
        assert outcome.recovered, outcome.detail
        assert outcome.data_lost == 0, outcome.detail
