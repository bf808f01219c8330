"""evaluate_images / evaluate_datasets: provenance, counts, per-condition breakdown, report files."""

from __future__ import annotations

import pytest
from metrics_helpers import SMALL, blob_image, write_dataset_folder

from hf_cxr_diffusion.artefacts import read_report
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.metrics import (
    XRVFeatureExtractor,
    evaluate_datasets,
    evaluate_images,
    fid_from_features,
    vendi_score,
    write_report,
)
from hf_cxr_diffusion.data.loading import load_split

NAMES = ["Atelectasis", "Effusion", "No Finding"]


def test_scores_equal_the_building_blocks_and_carry_provenance() -> None:
    real = [blob_image(s) for s in range(6)]
    syn = [blob_image(50 + s) for s in range(5)]
    labels_real = [[0], [0, 1], [1], [2], [0], [1]]
    labels_syn = [["Atelectasis"], ["Effusion"], [], ["Atelectasis"], ["Atelectasis"]]
    result = evaluate_images(
        real, syn, ("xrv_fid", "vendi", "class_consistency"), allow_random_weights=True, batch_size=4,
        labels_real=labels_real, labels_synthetic=labels_syn, label_names=NAMES, by_condition=True,
        vendi_q=2.0, protocol=SMALL,
    )
    feats = XRVFeatureExtractor(allow_random_weights=True, protocol=SMALL).features(real + syn)
    fr, fs = feats[:6], feats[6:]
    assert result["protocol"] == SMALL.id and result["random_weights"] is True
    assert (result["n_real"], result["n_synthetic"]) == (6, 5)
    assert result["xrv_fid"]["score"] == pytest.approx(fid_from_features(fr, fs), rel=1e-6)
    assert result["xrv_fid"]["random_weights"] is True and result["xrv_fid"]["n_real"] == 6
    assert result["vendi"]["score"] == pytest.approx(vendi_score(fs, 2.0), rel=1e-6)
    assert result["vendi"]["score_real"] == pytest.approx(vendi_score(fr, 2.0), rel=1e-6)
    per = result["by_condition"]
    assert (per["Atelectasis"]["n_real"], per["Atelectasis"]["n_synthetic"]) == (3, 3)
    assert per["Effusion"]["n_synthetic"] == 1 and per["Effusion"]["xrv_fid"] is None  # < 2 samples: no FID
    assert per["No Finding"]["n_real"] == 1 and per["No Finding"]["n_synthetic"] == 1  # empty list = No Finding
    assert {row["vendi_n"] for row in per.values()} == {1}  # fixed n: the smallest condition
    assert per["Atelectasis"]["xrv_fid"] > 0
    assert result["class_consistency"]["n"] == 5 and result["class_consistency"]["protocol"] == SMALL.id


def test_bad_requests_raise_user_errors() -> None:
    imgs = [blob_image(0)] * 2
    with pytest.raises(UserError):
        evaluate_images(imgs, imgs, ("fid_typo",), allow_random_weights=True)
    with pytest.raises(UserError):
        evaluate_images(imgs, imgs, ("class_consistency",), allow_random_weights=True)  # no labels
    with pytest.raises(UserError):
        evaluate_images(imgs, imgs, ("xrv_fid",), allow_random_weights=True, labels_real=[["a"]], by_condition=True)


def test_datasets_and_report_files(tmp_path) -> None:
    real_dir = write_dataset_folder(tmp_path / "real", "test", [blob_image(s) for s in range(3)], [[0], [1], [0]], NAMES)
    syn_dir = write_dataset_folder(tmp_path / "syn", "train", [blob_image(9 + s) for s in range(3)], [[0], [1], []], NAMES)
    result = evaluate_datasets(
        load_split(str(real_dir), "test"), load_split(str(syn_dir)), ("xrv_fid", "vendi"),
        allow_random_weights=True, by_condition=True, protocol=SMALL,
    )
    assert set(result["by_condition"]) == {"Atelectasis", "Effusion", "No Finding"}
    assert result["by_condition"]["Atelectasis"]["n_real"] == 2
    paths = write_report(result, tmp_path / "out")
    assert read_report(paths["json"]).random_weights
    md = paths["markdown"].read_text()
    assert "RANDOM WEIGHTS" in md and "| Atelectasis | 2 | 1 |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError):
        load_split(str(real_dir), "validation")
