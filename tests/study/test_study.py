"""A 3-method study end to end on phantom-base at minimal size; killed, resumed, sharded and collected.

One uninterrupted reference run is shared by the module; the sharded study (shard 1/2, then shard 2/2
killed inside a stage and resumed, then --collect) must end with the same tables.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.study import collect_study, load_study, plan_study, run_study
from hf_cxr_diffusion.artefacts import SYNTHETIC_IMAGES_DIR
from hf_cxr_diffusion.study.results import FIGURES_DIR, REPORT_MD, RESULTS_JSON, RESULTS_PARQUET, TABLES_MD
from hf_cxr_diffusion.study.runner import DATA_DIR, StudyFolder
from study_files import minimal_study, write_study

pytestmark = pytest.mark.slow  # two minimal studies (about 50 s together on 2 loaded cores)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted study (its dataset made from phantoms by the study itself)."""
    root = tmp_path_factory.mktemp("study-reference")
    study_file = write_study(root / "study.yaml", minimal_study())
    result = run_study(study_file, root / "out")
    return {"root": root, "file": study_file, "out": root / "out", "result": result,
            "dataset": root / "out" / DATA_DIR / "prepared"}


def _tables(out: Path) -> str:
    return (out / TABLES_MD).read_text(encoding="utf-8")


def test_study_end_to_end(reference: dict) -> None:
    out = reference["out"]
    assert reference["result"]["runs"] == {"base": ["generate", "evaluate", "utility"],
                                           **{m: ["train", "generate", "evaluate", "utility"] for m in ("lora", "bitfit", "difffit")}}
    rows = json.loads((out / RESULTS_JSON).read_text())["rows"]
    assert len(rows) == 4 * 2 and {r["condition"] for r in rows} == {"No Finding", "Cardiomegaly"}
    frame = pd.read_parquet(out / RESULTS_PARQUET)
    assert frame["run"].tolist() == [r["run"] for r in rows]
    for row in rows:
        assert row["protocol"] == "phantom-fid-v1" and row["fid_metric"] == "phantom_fid" and row["seed"] == 0
        assert row["fid"] > 0 and row["vendi"] >= 1 and 0 <= row["class_consistency"] <= 1
        assert 0 <= row["utility_accuracy"] <= 1 and row["git_revision"]
        if row["base"]:
            assert row["trainable_parameters"] == 0
        else:
            assert row["trainable_parameters"] > 0 and row["train_steps"] == 1 and row["peak_memory_mib"] > 0
            assert row["peak_memory_kind"] == "peak RSS" and row["seconds_per_step"] > 0
    # each method's row is its own run: the three adapters differ, so their samples do
    fids = {r["run"]: r["fid"] for r in rows}
    assert len(set(fids.values())) == 4
    for name in ("samples", "fid", "vendi", "params_vs_fid", "class_consistency"):
        assert (out / FIGURES_DIR / f"{name}.png").stat().st_size > 1000
    report = (out / REPORT_MD).read_text()
    assert f"![samples]({FIGURES_DIR}/samples.png)" in report and "## Cost" in report
    # --plan counts, from the model configuration alone, what each run then trained
    jobs = plan_study(load_study(reference["file"]))
    assert {j.run.name: j.trainable_parameters for j in jobs} == {r["run"]: r["trainable_parameters"] for r in rows}
    assert all(j.optimizer_memory_mib == pytest.approx(j.trainable_parameters * 16 / 2**20) for j in jobs)
    # a rerun of a complete study runs nothing and gives the same tables
    tables = _tables(out)
    again = run_study(reference["file"], out)
    assert all(stages == [] for stages in again["runs"].values()) and _tables(out) == tables


def _cells(tables: str, heading: str) -> list[dict[str, str]]:
    block = tables.split(heading, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_every_table_number_is_a_results_row(reference: dict) -> None:
    summary = json.loads((reference["out"] / RESULTS_JSON).read_text())
    rows = summary["rows"]
    by_label = {}
    for r in rows:
        by_label[r["label"] if r["base"] else f"{r['label']} (`{r['variant']}`)"] = r["variant"]
    abbreviations = {"Nf": "No Finding", "Ca": "Cardiomegaly"}

    def value(variant: str, column: str, condition: str | None) -> float:
        [match] = {r[column] for r in rows if r["variant"] == variant and (condition is None or r["condition"] == condition)}
        return match

    checked = 0
    for heading, columns in (
        ("Table 3 layout", {"FID↓ (phantom_fid)": ("fid", None, 1, 2), "Vendi↑": ("vendi", None, 1, 2),
                            **{f"Class Consistency↑ {a}": ("class_consistency", c, 100, 1) for a, c in abbreviations.items()}}),
        ("Table 4 layout", {a: ("utility_accuracy", c, 100, 1) for a, c in abbreviations.items()}),
        ("SeLoRA paper, Table 1 layout", {"Trainable params: U-Net (%)": ("trainable_percent_unet", None, 1, 3),
                                          "Trainable params: Text Encoder (%)": ("trainable_percent_text_encoder", None, 1, 3),
                                          "FID↓ (phantom_fid)": ("fid", None, 1, 2)}),
    ):
        cells = _cells(_tables(reference["out"]), heading)
        assert len(cells) == 4
        for cell in cells:
            variant = by_label[cell[next(iter(cell))]]
            for header, text in cell.items():
                if re.fullmatch(r"-?\d+\.\d+", text):
                    assert header in columns, f"{heading}: column {header!r} has numbers this test cannot trace"
                    column, condition, scale, digits = columns[header]
                    assert text == f"{value(variant, column, condition) * scale:.{digits}f}", (heading, header, variant)
                    checked += 1
    assert checked == 4 * 4 + 4 * 2 + (3 * 3 + 1)  # the base model trains nothing: its parameter shares are empty (—)


@pytest.fixture(scope="module")
def sharded(reference: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same study on the reference's dataset as two shards; shard 2 is killed inside unet's generate stage."""
    import hf_cxr_diffusion.generation.generator as generator

    root = tmp_path_factory.mktemp("study-sharded")
    study = minimal_study(dataset=str(reference["dataset"]))
    del study["phantoms"]
    study_file = write_study(root / "study.yaml", study)
    out = root / "out"
    info: dict = {"root": root, "out": out, "file": study_file}
    info["shard1"] = run_study(study_file, out, shard="1/2")
    info["after_shard1"] = sorted(p.name for p in out.iterdir() if p.is_dir())
    info["partial_collect"] = json.loads((collect_study(out)["json"]).read_text())

    real_save, saved = generator.save_png, []

    def killed_after_one_image(image, path, record):  # the job dies while difffit's generate folder fills
        if "difffit" in str(path):
            if saved:
                raise KeyboardInterrupt("killed")
            saved.append(path)
        real_save(image, path, record)

    generator.save_png = killed_after_one_image
    try:
        with pytest.raises(KeyboardInterrupt):
            run_study(study_file, out, shard="2/2")
    finally:
        generator.save_png = real_save
    folder = StudyFolder(out)
    info["killed_state"] = {s: folder.read_stage("difffit", s) is not None for s in ("train", "generate")}
    info["killed_images"] = len(list((folder.stage_dir("difffit", "generate") / SYNTHETIC_IMAGES_DIR).glob("*.png")))
    info["train_marker"] = folder.marker("difffit", "train").read_text()
    info["resumed"] = run_study(study_file, out, shard="2/2")
    info["collected"] = collect_study(out)
    return info


def test_killed_study_resumes_where_it_stopped(reference: dict, sharded: dict) -> None:
    assert sharded["killed_state"] == {"train": True, "generate": False} and sharded["killed_images"] == 1
    # shard 2/2 again: lora finished before the kill, difffit redoes its half-written stage and what follows
    assert sharded["resumed"]["runs"] == {"lora": [], "difffit": ["generate", "evaluate", "utility"]}
    assert StudyFolder(sharded["out"]).marker("difffit", "train").read_text() == sharded["train_marker"]
    assert _tables(sharded["out"]) == _tables(reference["out"])


def test_shards_and_collect_give_the_same_tables(reference: dict, sharded: dict) -> None:
    # shard 1/2 of [base, lora, bitfit, difffit] is base and bitfit, and only their folders were written
    assert set(sharded["shard1"]["runs"]) == {"base", "bitfit"} and sharded["shard1"]["collected"] is None
    assert sharded["after_shard1"] == ["base", "bitfit"]
    assert sharded["partial_collect"]["incomplete_runs"] == ["lora", "difffit"]
    assert {r["run"] for r in sharded["partial_collect"]["rows"]} == {"base", "bitfit"}
    assert _tables(sharded["out"]) == _tables(reference["out"])
    ref = pd.read_parquet(reference["out"] / RESULTS_PARQUET)
    got = pd.read_parquet(sharded["out"] / RESULTS_PARQUET)
    metrics = ["run", "condition", "fid", "vendi", "class_consistency", "utility_accuracy", "trainable_parameters"]
    pd.testing.assert_frame_equal(ref[metrics], got[metrics])


def test_conditions_absent_from_the_dataset(reference: dict, tmp_path: Path) -> None:
    study = minimal_study(dataset=str(reference["dataset"]), conditions=["No Finding", "Edema"])
    del study["phantoms"]
    with pytest.raises(UserError, match=r"conditions \['Edema'\] are absent from the 'test' split of .*prepared"):
        run_study(write_study(tmp_path / "s.yaml", study), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before the study folder is made
    study["conditions"] = ["No Finding", "Tuberculosis"]
    with pytest.raises(UserError, match=r"conditions \['Tuberculosis'\] are absent from dataset .*\(its labels: .*Cardiomegaly"):
        run_study(write_study(tmp_path / "s.yaml", study), tmp_path / "out")


def test_cli_plan_and_collect(reference: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hf_cxr_diffusion.cli import main

    assert main(["study", "--config", str(reference["file"]), "--plan", "--only", "lora"]) == 0
    plan = capsys.readouterr().out
    assert "| lora | lora | 0 |" in plan and "bitfit" not in plan
    copy = tmp_path / "copy"
    shutil.copytree(reference["out"], copy)
    (copy / TABLES_MD).unlink()
    assert main(["study", "--collect", str(copy)]) == 0
    assert _tables(copy) == _tables(reference["out"])
