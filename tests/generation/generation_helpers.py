"""What the generation tests share: the four-prompt plan and reading a generated folder's pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from hf_cxr_diffusion.generation.prompts import PromptItem, PromptPlan

PLAN = PromptPlan(
    (PromptItem("normal chest x-ray"), PromptItem("pneumonia", ("Pneumonia",)),
     PromptItem("normal lungs"), PromptItem("right lower lobe pneumonia", ("Pneumonia",))),
    ("Pneumonia",),
)  # fmt: skip


def pixels(out: Path, dtype: type | None = None) -> list[np.ndarray]:
    """The images of a generated folder, in file-name order (as ``dtype`` when given: int16 for differences)."""
    return [np.asarray(Image.open(p), dtype) for p in sorted((out / "images").glob("*.png"))]
