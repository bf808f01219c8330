"""The classifier and the real/synthetic mix experiments (DreamBooth/DenseNet synthetic CXR study).

Names are imported lazily so that ``cxr-diffusion --help`` does not load torch.
"""

from __future__ import annotations

from hf_cxr_diffusion._lazy import lazy_exports

_EXPORTS = {
    "run_experiments": "experiments",
    "TrainConfig": "train",
    "DEFAULT_EXPERIMENTS": "mixes",
    "PUBLISHED_MIXES": "mixes",
    "Mix": "mixes",
    "parse_experiments": "mixes",
    "select_mix": "mixes",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
