"""Run record + lock of the stages that are not training (runs.py): prepare and evaluate claim their folders."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hf_cxr_diffusion import runs
from hf_cxr_diffusion.data.preparation import prepare
from hf_cxr_diffusion.errors import UserError


@contextlib.contextmanager
def live_lock(out: Path, stage: str) -> Iterator[int]:
    """``out`` locked by a live process of this host (a sleeping child) for ``stage``; yields its PID."""
    out.mkdir(exist_ok=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / runs.LOCK_FILE).write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "stage": stage}))
        yield live.pid
    finally:
        live.kill()
        live.wait()


def contents(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hf_cxr_diffusion.phantoms.corpus import make_phantoms

    return make_phantoms(tmp_path_factory.mktemp("corpus") / "corpus", layout="pneumonia", n=12, seed=0, resolution=64)


def _prepare(corpus: Path, out: Path, **kw):
    return prepare(**{"corpus": "pneumonia", "data_dir": corpus, "output_dir": out, "resolution": 32, **kw})


def test_prepare_records_its_run_rewrites_its_own_folder_and_refuses_another_runs(corpus, tmp_path) -> None:
    out = tmp_path / "prepared"
    _prepare(corpus, out)
    first, before = runs.read_record(out), contents(out)
    assert first["stage"] == "prepare" and first["config"]["resolution"] == 32 and not (out / runs.LOCK_FILE).exists()
    _prepare(corpus, out, num_proc=2)  # the same run again (num_proc may change): written again, same bytes
    again = runs.read_record(out)
    assert again["run_id"] == first["run_id"] and [r["config"]["num_proc"] for r in again["resumes"]] == [2]
    assert {k: v for k, v in contents(out).items() if k != runs.RUN_FILE} == {k: v for k, v in before.items() if k != runs.RUN_FILE}
    before = contents(out)
    with pytest.raises(UserError, match=rf"{out} was written by a different prepare run .*differing: config.resolution;"
                                        r".*pass --overwrite"):
        _prepare(corpus, out, resolution=16)
    assert contents(out) == before  # nothing touched
    _prepare(corpus, out, resolution=16, overwrite=True)
    replaced = runs.read_record(out)
    assert replaced["run_id"] != first["run_id"] and replaced["config"]["resolution"] == 16


def test_prepare_never_swaps_away_a_file_it_did_not_write(corpus, tmp_path) -> None:
    out = tmp_path / "prepared"
    _prepare(corpus, out)
    (out / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(UserError, match=r"holds 1 entry that is not a prepared dataset \(notes.txt\)"):
            _prepare(corpus, out, overwrite=overwrite)
    assert (out / "notes.txt").read_text() == "mine" and (out / "data").is_dir()


def test_concurrent_prepare_refused_then_a_dead_writers_lock_and_half_folder_are_taken_over(corpus, tmp_path, caplog) -> None:
    out = tmp_path / "prepared"
    with live_lock(out, "prepare") as pid:
        with pytest.raises(UserError, match=rf"{out} is being written by prepare run PID {pid} on .*wait for it"):
            _prepare(corpus, out)
        assert sorted(p.name for p in out.iterdir()) == [runs.LOCK_FILE]
    half = tmp_path / f".prepared.{pid}.0123abcd.tmp"  # the half-built folder a killed prepare leaves beside it
    (half / "data").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger=runs.__name__):
        _prepare(corpus, out)
    assert f"taking over the stale lock {out / runs.LOCK_FILE} of PID {pid}" in caplog.text
    assert not half.exists() and not (out / runs.LOCK_FILE).exists() and runs.read_record(out)["stage"] == "prepare"


def test_failed_prepare_leaves_no_folder(corpus, tmp_path) -> None:
    import shutil

    empty = shutil.copytree(corpus, tmp_path / "corpus")
    for image in [p for p in empty.rglob("*") if p.suffix in (".png", ".jpeg", ".jpg")]:
        image.write_bytes(b"not an image")  # every image unreadable: skipped, then "no images left"
    out = tmp_path / "new"
    with pytest.raises(UserError, match="no images left"):
        _prepare(empty, out, on_missing="skip")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["corpus"]


def _evaluate(real: Path, synthetic: Path, out: Path, **kw):
    from hf_cxr_diffusion.metrics import evaluate_folders

    return evaluate_folders(str(real), str(synthetic), out, **{"metrics": ("vendi",), "split": "train", "feature_model": "phantom",
                                                               "batch_size": 8, **kw})


def test_evaluate_records_its_run_and_refuses_another_evaluations_folder(phantom_dataset_dir, tmp_path) -> None:
    out = tmp_path / "evaluation"
    (out / "notes.txt").parent.mkdir()
    (out / "notes.txt").write_text("mine")
    _evaluate(phantom_dataset_dir, phantom_dataset_dir, out, synthetic_split="train")
    first = runs.read_record(out)
    assert first["stage"] == "evaluate" and first["config"]["metrics"] == ["vendi"] and not (out / runs.LOCK_FILE).exists()
    _evaluate(phantom_dataset_dir, phantom_dataset_dir, out, synthetic_split="train", batch_size=4)  # same run, rewritten
    assert runs.read_record(out)["run_id"] == first["run_id"]
    before = contents(out)
    with pytest.raises(UserError, match=rf"{out} was written by a different evaluate run .*differing: config.max_synthetic;"):
        _evaluate(phantom_dataset_dir, phantom_dataset_dir, out, synthetic_split="train", max_synthetic=4)
    assert contents(out) == before
    result = _evaluate(phantom_dataset_dir, phantom_dataset_dir, out, synthetic_split="train", max_synthetic=4, overwrite=True)
    assert result["n_synthetic"] == 4 and runs.read_record(out)["run_id"] != first["run_id"]
    assert json.loads((out / "report.json").read_text())["context"]["n_synthetic"] == 4
    assert (out / "notes.txt").read_text() == "mine"  # not evaluate's: kept


def test_evaluate_never_writes_into_another_stages_folder(phantom_dataset_dir, lora_run, tmp_path) -> None:
    import shutil

    train_out = shutil.copytree(lora_run.output_dir, tmp_path / "lora")
    before = contents(train_out)
    for overwrite in (False, True):
        with pytest.raises(UserError, match=rf"{train_out} holds the outputs of a train run \(cxr_run.json\); a evaluate "
                                            r"run never writes into another stage's folder"):
            _evaluate(phantom_dataset_dir, phantom_dataset_dir, train_out, synthetic_split="train", overwrite=overwrite)
    assert contents(train_out) == before


def test_concurrent_evaluate_refused(phantom_dataset_dir, tmp_path) -> None:
    out = tmp_path / "evaluation"
    with live_lock(out, "evaluate") as pid:
        with pytest.raises(UserError, match=rf"{out} is being written by evaluate run PID {pid} on "):
            _evaluate(phantom_dataset_dir, phantom_dataset_dir, out, synthetic_split="train")
        assert sorted(p.name for p in out.iterdir()) == [runs.LOCK_FILE]
