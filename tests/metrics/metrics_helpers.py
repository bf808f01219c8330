"""Helpers for the metrics tests: phantom-like images, a cheap protocol variant, dataset folders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hf_cxr_diffusion.metrics.features import Protocol

#: a 64 px variant of xrv-fid-v2 so the random DenseNet stays cheap on CPU (its id says so)
SMALL = Protocol(id="xrv-fid-v2-test64", size=64)


def blob_image(seed: int, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """A smooth 8-bit grayscale image (random Gaussian blobs): not a real X-ray."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]] / max(size)
    img = np.zeros(size)
    for _ in range(4):
        cy, cx, s, a = rng.random(4)
        img += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.02 + 0.1 * s))
    return (255 * img / img.max()).astype(np.uint8)


def write_dataset_folder(
    root: Path, split: str, images: Sequence[np.ndarray], labels: Sequence[Sequence[int]], names: Sequence[str]
) -> Path:
    """A folder in the prepared-dataset layout: ``data/<split>-00000-of-00001.parquet``."""
    import datasets
    from PIL import Image

    features = datasets.Features(
        {"image": datasets.Image(), "labels": datasets.List(datasets.ClassLabel(names=list(names))), "prompt": datasets.Value("string")}
    )
    ds = datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(im) for im in images],
            "labels": [list(lab) for lab in labels],
            "prompt": ["chest x-ray"] * len(images),
        },
        features=features,
    )
    (root / "data").mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root
