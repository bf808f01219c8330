"""Fixtures for the trainer tests: a tiny prepared-dataset folder of synthetic shapes (no patient data)."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_helpers import write_dataset


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 training and 4 validation images of 64 px with prompts."""
    return write_dataset(tmp_path_factory.mktemp("data") / "shapes", {"train": 12, "validation": 4})
