"""The classifier and the real/synthetic mix experiments (DreamBooth/DenseNet synthetic CXR study).

Names are imported lazily so that ``cxr-diffusion --help`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run_experiments": "experiments",
    "TrainConfig": "train",
    "DEFAULT_EXPERIMENTS": "mixes",
    "PUBLISHED_MIXES": "mixes",
    "Mix": "mixes",
    "parse_experiments": "mixes",
    "select_mix": "mixes",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
