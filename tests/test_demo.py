"""The README's demo, end to end (fewer LoRA steps than the default to stay fast)."""

import json

from PIL import Image

from hf_cxr_diffusion.cli import main
from hf_cxr_diffusion.demo import STAGES


def test_demo_runs_every_stage_and_writes_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--train-steps", "20"]) == 0
    report = out / "report"
    summary = json.loads((report / "summary.json").read_text())
    assert "phantoms" in summary["disclaimer"]
    stages = summary["stages"]
    assert set(stages) == {name for name, _ in STAGES}
    assert stages["train"]["steps"] == 20 and stages["train"]["trainable_parameters"] > 0
    assert stages["evaluate"]["random_weights"] is True  # never reported as if real weights were used
    assert stages["generate"]["images"] == 16
    grid = Image.open(report / "sample_grid.png")
    assert grid.width > 8 * 64 and grid.height > 2 * 64
    assert Image.open(report / "loss_curve.png").size[0] > 100
    text = (report / "summary.md").read_text()
    assert "RANDOM WEIGHTS" in text and "| baseline | 100.0% (317) |" in text
    assert (out / "export" / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "export" / "dataset" / "README.md").is_file()
    assert not any((out / "export" / "adapter").glob("checkpoint-*"))
    printed = capsys.readouterr().out
    assert "exercises the software" in printed
