"""The classifier experiments learn toy findings, report sklearn's metrics and keep the test split clean."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

from hf_cxr_diffusion.cli import main
from hf_cxr_diffusion.downstream import run_experiments
from hf_cxr_diffusion.downstream.classifier import build_classifier
from hf_cxr_diffusion.downstream.data import LabelSpace, load_pools
from hf_cxr_diffusion.downstream.metrics import classification_metrics
from hf_cxr_diffusion.errors import UserError

FAST = dict(arch="small-cnn", image_size=32, epochs=6, lr=3e-3, batch_size=16, seed=0)


@pytest.fixture(scope="module")
def study(blob_real, blob_synthetic, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("classify") / "study"
    return out, run_experiments(blob_real, blob_synthetic, out, "baseline,synth-50,synth-only", label_mode="binary", **FAST)


def test_classifier_learns_the_finding_on_real_test_images(study) -> None:
    _, results = study
    assert [e["name"] for e in results["experiments"]] == ["baseline", "synth-50", "synth-only"]
    for exp in results["experiments"]:
        assert exp["metrics"]["n"] == 50
        assert exp["metrics"]["accuracy"] >= 0.8, exp  # chance is 0.5 (25 + 25 test images)
        assert exp["metrics"]["auc"] >= 0.85
    assert results["pretrained"] is False and results["class_names"] == ["no Pneumonia", "Pneumonia"]


def test_metrics_equal_sklearn_on_saved_predictions(study) -> None:
    out, results = study
    for exp in results["experiments"]:
        frame = pd.read_csv(out / exp["name"] / "predictions.csv")
        y, pred, score = frame["y_true"], frame["y_pred"], frame["prob_Pneumonia"]
        assert np.array_equal(pred, (score > frame["prob_no Pneumonia"]).astype(int))
        m = exp["metrics"]
        assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        assert m["f1"] == pytest.approx(f1_score(y, pred), abs=1e-12)
        assert m["precision"] == pytest.approx(precision_score(y, pred), abs=1e-12)
        assert m["recall"] == pytest.approx(recall_score(y, pred), abs=1e-12)
        assert m["auc"] == pytest.approx(roc_auc_score(y, score), abs=1e-12)
        assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()


def test_test_split_is_real_and_patient_disjoint(study, blob_real) -> None:
    out, results = study
    splits = json.loads((out / "splits.json").read_text())
    test_patients = [blob_real["test"][r]["patient_id"] for r in splits["test_rows"]]
    assert splits["test_rows"] == list(range(len(blob_real["test"])))
    for exp in results["experiments"]:
        frame = pd.read_csv(out / exp["name"] / "predictions.csv")
        assert frame["row"].tolist() == splits["test_rows"] and frame["patient_id"].tolist() == test_patients
        train_patients = {blob_real["train"][r]["patient_id"] for r in splits[exp["name"]]["real_train_rows"]}
        assert not train_patients & set(test_patients)
        assert not any(p.startswith("syn") for p in frame["patient_id"])
    assert len(splits["synth-50"]["synthetic_rows"]) == 30 and splits["synth-only"]["real_train_rows"] == []
    n = {e["name"]: (e["n_real"], e["n_synthetic"], e["per_class"]) for e in results["experiments"]}
    assert n["synth-50"] == (80, 30, {"Pneumonia": 55, "no Pneumonia": 55})


def test_report_files(study) -> None:
    out, _ = study
    table = (out / "results.md").read_text()
    assert ("| Experiment | Real data (% of the 80 real training images) | Synthetic data (% of the 60 synthetic images) "
            "| Total images | Accuracy [95% CI] | Majority rate | F1 Score | AUC | Δ vs Baseline |") in table
    majority = json.loads((out / "results.json").read_text())["experiments"][0]["metrics"]["majority_rate"]
    assert f"| {majority * 100:.1f}% |" in table and "majority rate is what always answering" in table
    assert "| synth-50 | 100.0% (80) | 50.0% (30) | 110 |" in table
    for name in ("accuracy_comparison", "training_curves", "confusion_matrices"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "baseline" / "model.safetensors").stat().st_size > 0


def test_overlapping_test_patients_are_removed_and_counted(blob_real) -> None:
    from datasets import DatasetDict

    test = blob_real["test"].map(lambda row, i: {"patient_id": "tr0" if i < 3 else row["patient_id"]}, with_indices=True)
    pools = load_pools(DatasetDict(train=blob_real["train"], validation=blob_real["validation"], test=test), None, ("binary", None), 16)
    assert pools.test_dropped_patient_overlap == 3 and len(pools.test) == 47 and "tr0" not in pools.test.patients


def test_zero_real_images_of_a_class_is_refused(blob_real, blob_synthetic, tmp_path) -> None:
    from datasets import DatasetDict

    few = blob_real["train"].select([0, 2, 4] + list(range(1, 80, 2)))  # 3 normal, 40 pneumonia rows
    real = DatasetDict(train=few, validation=blob_real["validation"], test=blob_real["test"])
    with pytest.raises(UserError, match=r"limited-10: class 'no Pneumonia' has 0 real training images \(3 in the real training pool x 10%\)"):
        run_experiments(real, blob_synthetic, tmp_path, "baseline,limited-10", **FAST)
    assert not (tmp_path / "baseline").exists()  # refused before any training


def test_multilabel_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    space = LabelSpace("multilabel", ("Effusion", "Pneumonia", "Edema"))
    y = rng.integers(0, 2, (60, 3))
    y[:, 2] = 0  # AUC undefined for Edema
    probs = np.clip(y * 0.4 + rng.uniform(0, 0.6, (60, 3)), 0, 1)
    m = classification_metrics(y, probs, space)
    pred = (probs >= 0.5).astype(int)
    assert m["per_class_auc"]["Edema"] is None
    for j, name in enumerate(space.labels[:2]):
        assert m["per_class_auc"][name] == pytest.approx(roc_auc_score(y[:, j], probs[:, j]))
    assert m["auc"] == pytest.approx(np.mean([roc_auc_score(y[:, j], probs[:, j]) for j in range(2)]))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))


def test_densenet_head_and_scratch_warning(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with caplog.at_level(logging.WARNING):
        model, pretrained = build_classifier(2, "densenet121")
    assert pretrained is False and "training from scratch" in caplog.text
    head = model.classifier
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert (head[0].in_features, head[0].out_features, head[2].p, head[3].out_features) == (1024, 512, 0.5, 2)


def test_classify_cli(blob_real_dir, tmp_path, capsys, caplog) -> None:
    out = tmp_path / "cli"
    argv = ["classify", "--dataset", str(blob_real_dir), "--experiments", "baseline", "--output-dir", str(out), "--arch", "small-cnn",
            "--image-size", "16", "--epochs", "1", "--batch-size", "32", "--labels", "Pneumonia"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["counts"]["test"] == 50 and results["experiments"][0]["total"] == 80
    assert main([*argv[:-2], "--labels", "Edema"]) == 2
    assert "--labels ['Edema'] not in the real dataset's labels" in capsys.readouterr().err
    # the old spellings still work for one release, with a warning naming the new flag
    old = ["--real" if a == "--dataset" else "--out" if a == "--output-dir" else a for a in argv]
    old[old.index("--out") + 1] = str(tmp_path / "old")
    with caplog.at_level(logging.WARNING):
        assert main(old) == 0
    assert "--real is deprecated" in caplog.text and "use --dataset" in caplog.text and "--out is deprecated" in caplog.text
    assert json.loads((tmp_path / "old" / "results.json").read_text())["counts"] == results["counts"]


def test_classifier_learns_phantom_pneumonia(tmp_path) -> None:
    """The demo's setting: pneumonia-layout phantoms (patchy opacities), prepared at 64 px."""
    from hf_cxr_diffusion.phantoms.corpus import make_phantoms
    from hf_cxr_diffusion.data.preparation import prepare

    corpus = make_phantoms(tmp_path / "corpus", layout="pneumonia", n=400, seed=0, resolution=64)
    real = prepare(corpus="pneumonia", data_dir=corpus, output_dir=tmp_path / "prepared", resolution=64).output_dir
    results = run_experiments(real, None, tmp_path / "out", "baseline", labels=["Pneumonia"], arch="small-cnn",
                              image_size=64, epochs=20, lr=3e-3, batch_size=16, seed=0)  # fmt: skip
    metrics = results["experiments"][0]["metrics"]
    majority = max(np.bincount(pd.read_csv(tmp_path / "out" / "baseline" / "predictions.csv")["y_true"])) / metrics["n"]
    assert metrics["accuracy"] >= majority + 0.15 and metrics["auc"] >= 0.9, (metrics, majority)
