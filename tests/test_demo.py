import json

from hf_cxr_diffusion.cli import main


def test_demo_runs_end_to_end_and_writes_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--train-steps", "20"]) == 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert "phantoms" in summary["disclaimer"]
    assert (out / "tiny-sd" / "model_index.json").is_file()
    assert "model" in summary["stages"]
    assert "| model |" in (out / "report" / "summary.md").read_text()
