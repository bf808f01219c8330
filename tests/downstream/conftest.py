"""Learnable toy data for the classifier tests: class "Pneumonia" = a bright blob on a noisy field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

LABELS = ["No Finding", "Pneumonia"]


def blob_dataset(n_per_class: int, seed: int, prefix: str, size: int = 32, images_per_patient: int = 1):
    """A ``datasets.Dataset`` with prepared-dataset columns; Pneumonia rows carry a bright blob."""
    from datasets import ClassLabel, Dataset, Features, List, Value
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"image": [], "labels": [], "patient_id": [], "prompt": []}
    yy, xx = np.mgrid[:size, :size]
    for k in range(2 * n_per_class):
        positive = k % 2 == 1
        img = rng.normal(90, 25, (size, size))
        if positive:
            cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
            img += 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 8) ** 2))
        rows["image"].append(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)))
        rows["labels"].append([1] if positive else [0])
        rows["patient_id"].append(f"{prefix}{k // images_per_patient}")
        rows["prompt"].append("chest x-ray, pneumonia" if positive else "chest x-ray, no finding")
    features = Features({"image": ImageFeature(), "labels": List(ClassLabel(names=LABELS)), "patient_id": Value("string"), "prompt": Value("string")})
    return Dataset.from_dict(rows, features=features)


@pytest.fixture(scope="session")
def blob_real():
    from datasets import DatasetDict

    return DatasetDict(
        train=blob_dataset(40, 1, "tr"), validation=blob_dataset(12, 2, "va"), test=blob_dataset(25, 3, "te")
    )


@pytest.fixture(scope="session")
def blob_synthetic():
    from datasets import DatasetDict

    return DatasetDict(train=blob_dataset(30, 4, "syn"))


@pytest.fixture(scope="session")
def blob_real_dir(blob_real, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real blob data as a parquet folder, read back by ``datasets.load_dataset(folder)``."""
    out = tmp_path_factory.mktemp("real") / "blob-real"
    (out / "data").mkdir(parents=True)
    for split, ds in blob_real.items():
        ds.to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
    return out


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every module here runs on one intra-op thread (tests/conftest.py's ``one_torch_thread``)."""
