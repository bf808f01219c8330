"""Metric input faults end in one-line errors naming where the bad input came from."""

from __future__ import annotations

import pytest
from metrics_helpers import blob_image, write_dataset_folder

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.metrics.extractor import FeatureModel
from hf_cxr_diffusion.metrics.folders import evaluate_folders

NAMES = ["Atelectasis", "Effusion", "No Finding"]


def test_nan_features_name_the_folder_and_the_images(tmp_path, monkeypatch) -> None:
    real = write_dataset_folder(tmp_path / "real", "test", [blob_image(s) for s in range(3)], [[0], [1], [2]], NAMES)
    syn = write_dataset_folder(tmp_path / "syn", "train", [blob_image(7), blob_image(8), blob_image(9)], [[0], [1], [2]], NAMES)
    real_forward = FeatureModel.forward_tensors

    def poisoned(self, pixels):  # a feature network that breaks on one synthetic image (the 3rd of the stream)
        feats = real_forward(self, pixels).clone()
        if poisoned.calls == 0:
            feats[2, 0] = float("nan")
        poisoned.calls += 1
        return feats

    poisoned.calls = 0
    monkeypatch.setattr(FeatureModel, "forward_tensors", poisoned)
    with pytest.raises(UserError, match=rf"^synthetic images of {syn}: the feature model gives NaN/inf features for image\(s\) \[2\]"):
        evaluate_folders(real, syn, tmp_path / "report", metrics="vendi", synthetic_split="train", allow_random_weights=True)
