"""``cxr-diffusion evaluate`` on prepared/synthetic dataset folders."""

from __future__ import annotations

from metrics_helpers import blob_image, write_dataset_folder

from hf_cxr_diffusion.artefacts import read_report
from hf_cxr_diffusion.cli import main

NAMES = ["Atelectasis", "Effusion", "No Finding"]


def test_evaluate_writes_json_markdown_and_png(tmp_path, capsys) -> None:
    real = write_dataset_folder(tmp_path / "real", "test", [blob_image(s) for s in range(3)], [[0], [1], [2]], NAMES)
    write_dataset_folder(real, "train", [blob_image(20), blob_image(21)], [[0], [1]], NAMES)
    syn = write_dataset_folder(tmp_path / "syn", "train", [blob_image(7), blob_image(21)], [[0], [1]], NAMES)  # #1 copies train #1
    out = tmp_path / "report" / "report.json"
    argv = ["evaluate", "--dataset", str(real), "--synthetic", str(syn), "--metrics", "xrv_fid,vendi,class_consistency,memorisation",
            "--allow-random-weights", "--protocol", "xrv-fid-v1", "--output-dir", str(out.parent)]
    assert main(argv) == 0
    read = read_report(out)
    report, metrics = read.context, {k: m.details for k, m in read.metrics.items()}
    assert read.random_weights and report["random_weights"] is True and report["protocol"] == "xrv-fid-v1"
    assert {m.protocol for m in read.metrics.values()} == {"xrv-fid-v1"}
    assert metrics["memorisation"]["threshold_method"] == "calibrated"
    assert metrics["memorisation"]["calibration"]["n_held_out"] == 3
    assert (report["n_real"], report["n_synthetic"]) == (3, 2)
    assert report["inputs"]["real_split"] == "test" and report["inputs"]["synthetic_split"] == "train"
    assert set(metrics["class_consistency"]["per_condition"]) == {"Atelectasis", "Effusion"}
    assert report["inputs"]["training_split"] == "train" and metrics["memorisation"]["n_training"] == 2
    assert metrics["memorisation"]["flagged_synthetic_indices"] == [1]
    assert metrics["memorisation"]["top_pairs"][0]["training_index"] == 1
    assert read.metrics["memorisation"].value == 0.5 and read.metrics["memorisation"].higher_is_better is False
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").is_file()
    assert (out.parent / "memorisation_pairs.png").is_file()


def test_evaluate_errors_are_one_line_exit_2(tmp_path, capsys) -> None:
    real = write_dataset_folder(tmp_path / "real", "test", [blob_image(0)] * 2, [[0], [1]], NAMES)
    assert main(["evaluate", "--real", str(real), "--synthetic", str(real), "--synthetic-split", "test",
                 "--out", str(tmp_path / "out" / "r.json")]) == 2  # weights missing, random not allowed
    last = capsys.readouterr().err.strip().splitlines()[-1]  # earlier lines: datasets' progress bars
    assert last.startswith("cxr-diffusion evaluate: error:") and "models_data" in last
    assert main(["evaluate", "--real", str(real), "--synthetic", str(real), "--metrics", "nope",
                 "--out", str(tmp_path / "out" / "r.json")]) == 2
    assert main(["evaluate", "--dataset", str(real), "--synthetic", str(real), "--feature-model", "inception",
                 "--output-dir", str(tmp_path / "r")]) == 2
    assert "unknown feature model 'inception'" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main(["evaluate", "--dataset", str(real), "--synthetic", str(real), "--protocol", "xrv-fid-v7",
                 "--output-dir", str(tmp_path / "r")]) == 2
    assert main(["evaluate", "--dataset", str(real), "--synthetic", str(real), "--synthetic-split", "test",
                 "--metrics", "fid", "--max-real", "1", "--allow-random-weights", "--output-dir", str(tmp_path / "one")]) == 0
    one = read_report(tmp_path / "one" / "report.json").metrics["xrv_fid"]
    assert one.value is None and "real has 1" in one.details["not_computed"]
