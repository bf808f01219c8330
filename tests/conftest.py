"""Shared fixtures: offline mode, the tiny pipeline (built once per session)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# 2 threads as on CI's 2 cores; OMP_NUM_THREADS=1 when the machine is shared (oversubscribed threads spin)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


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
