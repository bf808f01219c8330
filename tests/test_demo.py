"""The README's demo, end to end with its default recipe: fine-tuning on the shipped phantom base must teach."""

import json

import pytest
from PIL import Image

from hf_cxr_diffusion.cli import main
from hf_cxr_diffusion.demo import CONDITIONS, MARKER, STAGES

pytestmark = [pytest.mark.slow, pytest.mark.longest]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--output-dir", str(out)]) == 0
    return out, json.loads((out / "report" / "summary.json").read_text())


def test_fine_tuning_teaches_the_findings(demo):
    _, summary = demo
    evaluation = summary["stages"]["evaluate"]
    base, tuned = evaluation["base"], evaluation["finetuned"]
    assert base["protocol"] == tuned["protocol"] == "phantom-fid-v1"
    assert not base["random_weights"] and not tuned["random_weights"]
    for condition in CONDITIONS:
        assert tuned["class_consistency"][condition] >= base["class_consistency"][condition] + 0.2, condition
    assert tuned["phantom_fid"] < base["phantom_fid"]
    assert tuned["memorisation_flagged"] == 0


def test_report_shows_before_after_metrics_and_loss(demo):
    out, summary = demo
    assert set(summary["stages"]) == {name for name, _ in STAGES}
    assert "phantoms" in summary["disclaimer"]
    report = out / "report"
    grid = Image.open(report / "before_after.png")
    assert grid.width > 8 * 64 and grid.height > len(CONDITIONS) * 64
    assert Image.open(report / "class_consistency.png").size[0] > 100
    assert Image.open(report / "loss_curve.png").size[0] > 100
    text = (report / "summary.md").read_text()
    assert "phantom-fid-v1" in text and "RANDOM" not in text
    for condition in CONDITIONS:
        assert f"class consistency: {condition}" in text
    assert "majority" in text  # the classifier table carries the majority-class rate
    assert (out / "export" / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "export" / "dataset" / "README.md").is_file()


def test_rerun_needs_overwrite_and_never_replaces_foreign_folders(demo, tmp_path, capsys):
    out, _ = demo
    assert main(["demo", "--output-dir", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["demo", "--output-dir", str(foreign), "--overwrite"]) == 2
    assert "not a demo output folder" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me" and not (foreign / MARKER).exists()


def test_bad_sizes_are_refused(tmp_path, capsys):
    assert main(["demo", "--output-dir", str(tmp_path / "x"), "--train-steps", "0"]) == 2
    assert "--train-steps must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
