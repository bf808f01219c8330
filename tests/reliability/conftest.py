"""Fixtures of the fault-injection suite: the tiny dataset of the trainer tests, probes importable by name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "training"))


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training_helpers import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data") / "shapes", {"train": 12, "validation": 4})
