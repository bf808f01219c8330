"""Bad study input: each a one-line UserError naming the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.study import collect_study, load_study, run_study
from hf_cxr_diffusion.study.runner import claim_study_folder
from study_files import METHODS, minimal_study, write_study


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_unknown_method_preset(tmp_path: Path) -> None:
    study = minimal_study(methods=[*METHODS, {"name": "qlora", "preset": "paradigm-99-qlora"}])
    with pytest.raises(UserError, match=r"s.yaml: method 'qlora': preset 'paradigm-99-qlora' does not exist .*paradigm-08-lora") as err:
        load_study(write_study(tmp_path / "s.yaml", study))
    _one_line(err)


def test_two_methods_with_the_same_name(tmp_path: Path) -> None:
    study = minimal_study(methods=[*METHODS, {"name": "lora", "preset": "paradigm-09-dora"}])
    with pytest.raises(UserError, match=r"s.yaml: two methods are named 'lora'; give each method a unique name") as err:
        load_study(write_study(tmp_path / "s.yaml", study))
    _one_line(err)


def test_folder_of_a_different_study_is_refused_unless_overwrite(tmp_path: Path) -> None:
    first = load_study(write_study(tmp_path / "a.yaml", minimal_study()))
    folder = claim_study_folder(first, tmp_path / "out")
    (folder.run_dir("lora")).mkdir()  # a run folder of the first study
    changed = minimal_study(generation={"per_condition": 3, "steps": 2, "batch_size": 4}, seeds=[0, 1])
    second = write_study(tmp_path / "b.yaml", changed)
    with pytest.raises(UserError, match=r"out holds a study made by a different study file \(.*a.yaml\): "
                                        r"generation.per_condition, seeds differ; pass --overwrite") as err:
        run_study(second, tmp_path / "out")
    _one_line(err)
    claim_study_folder(load_study(second), tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "lora").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"other exists, is not empty and holds no study"):
        claim_study_folder(first, tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_collect_without_a_complete_method(tmp_path: Path) -> None:
    claim_study_folder(load_study(write_study(tmp_path / "s.yaml", minimal_study())), tmp_path / "out")
    with pytest.raises(UserError, match=r"out: no method of the study is complete yet \(incomplete: base, lora, bitfit, difffit\)"):
        collect_study(tmp_path / "out")
    with pytest.raises(UserError, match=r"empty is not a study folder \(study.json is missing\)"):
        collect_study(tmp_path / "empty")


def test_grid_and_seeds_expand_into_named_runs(tmp_path: Path) -> None:
    study = minimal_study(seeds=[0, 1], methods=[{"name": "lora", "preset": "paradigm-08-lora",
                                                  "grid": {"rank": [4, 8], "learning_rate": [1.0e-4]}}])
    loaded = load_study(write_study(tmp_path / "s.yaml", study))
    names = [r.name for r in loaded.runs()]
    assert names == ["base-s0", "base-s1", "lora-rank4-learning_rate0.0001-s0", "lora-rank4-learning_rate0.0001-s1",
                     "lora-rank8-learning_rate0.0001-s0", "lora-rank8-learning_rate0.0001-s1"]
    cfg = loaded.train_config(loaded.runs()[4], dataset="d", output_dir=tmp_path / "run")
    assert cfg.method_config["rank"] == 8 and cfg.method_config["lora_alpha"] == 16  # the preset's alpha kept
    assert cfg.learning_rate == 1.0e-4 and cfg.seed == 0 and cfg.resolution == 64 and cfg.pretrained_model == "phantom-base"


def test_bad_only_and_shard(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hf_cxr_diffusion.cli import main

    study_file = write_study(tmp_path / "s.yaml", minimal_study())
    assert main(["study", "--config", str(study_file), "--output-dir", str(tmp_path / "out"), "--shard", "3/2"]) == 2
    assert "error: --shard '3/2' is not I/N with 1 <= I <= N (e.g. 1/4)" in capsys.readouterr().err
    assert main(["study", "--config", str(study_file), "--output-dir", str(tmp_path / "out"), "--only", "lora,qlora"]) == 2
    assert "error: --only qlora: no such run or method; the study has base, bitfit, difffit, lora" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
