"""Shared fixtures: offline mode, the tiny pipeline (built once per session)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:  # `pytest -n N`: the workers share the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# 2 threads as on CI's 2 cores; OMP_NUM_THREADS=1 when the machine is shared (oversubscribed threads spin)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``longest`` (the demo's fixture: a third of the suite's CPU time) run first, so that under
    ``pytest -n 2`` the other worker gets through the rest beside them rather than after them."""
    items.sort(key=lambda item: item.get_closest_marker("longest") is None)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: the 2-core CI box runs other suites at once and 2 spinning threads per
    process slow tiny models down many times over; results compared with ``OMP_NUM_THREADS=1`` subprocesses need
    the same reduction order in the test process."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 64 px Stable Diffusion pipeline folder (seed 0), shared by the whole session."""
    from hf_cxr_diffusion.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0, resolution=64)


@pytest.fixture(scope="session")
def clip_tokenizer():
    """The offline CLIP tokenizer (standard 49,408-id vocabulary)."""
    from hf_cxr_diffusion.models.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer()


# ----------------------------------------------------------------------------- artefacts made by their real writers

@pytest.fixture(scope="session")
def phantom_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared dataset written by `prepare` from 24 phantom radiographs (Kermany pneumonia layout, 64 px)."""
    from artefact_makers import prepare_phantoms

    return prepare_phantoms(tmp_path_factory.mktemp("phantom-data"))


@pytest.fixture(scope="session")
def lora_run(tiny_model_dir: Path, phantom_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`train --method lora` (B initialised non-zero, so the adapter changes images); a TrainResult."""
    from artefact_makers import train_tiny

    out = tmp_path_factory.mktemp("runs") / "lora"
    return train_tiny(tiny_model_dir, phantom_dataset_dir, out, "lora", {"init_lora_weights": False})


@pytest.fixture(scope="session")
def dora_te_run(tiny_model_dir: Path, phantom_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`train --method dora` with the text encoder, at a learning rate that moves the magnitudes; a TrainResult."""
    from artefact_makers import train_tiny

    out = tmp_path_factory.mktemp("runs") / "dora-te"
    return train_tiny(tiny_model_dir, phantom_dataset_dir, out, "dora", {"train_text_encoder": True},
                      learning_rate=3e-2, max_train_steps=3)
