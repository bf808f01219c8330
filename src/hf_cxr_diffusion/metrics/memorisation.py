"""Memorisation / privacy check: nearest training neighbour of every synthetic image.

For each synthetic image the highest cosine similarity of its xrv features to any training
image's, following the feature-space copy detection of Somepalli et al., "Diffusion Art or Digital
Forgery? Investigating Data Replication in Diffusion Models" (CVPR 2023) and the patient
re-identification concern of Packhäuser et al., "Deep learning-based patient re-identification is
able to exploit the biometric nature of medical chest X-ray data" (Sci. Rep. 2022). Features are
centred on the training mean before the cosine (pooled ReLU activations are all positive, so raw
cosines crowd near 1); an exact copy still scores 1.0. Reports the distribution, the fraction
above a threshold, and the top-k closest pairs as an image grid for a person to look at.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_cxr_diffusion.errors import UserError

DEFAULT_THRESHOLD = 0.95


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def nearest_training_neighbours(
    train_features: np.ndarray, synthetic_features: np.ndarray, *, center: bool = True, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Per synthetic row: (max cosine similarity to the training rows, index of that training row)."""
    train = torch.as_tensor(np.asarray(train_features), dtype=torch.float64)
    syn = torch.as_tensor(np.asarray(synthetic_features), dtype=torch.float64)
    if train.ndim != 2 or syn.ndim != 2 or train.shape[1] != syn.shape[1] or len(train) == 0:
        raise UserError(f"feature shapes {tuple(train.shape)} (training) and {tuple(syn.shape)} (synthetic) do not match")
    if center:
        mean = train.mean(0, keepdim=True)
        train, syn = train - mean, syn - mean
    train = _unit_rows(train)
    best = torch.empty(len(syn), dtype=torch.float64)
    index = torch.empty(len(syn), dtype=torch.long)
    for start in range(0, len(syn), chunk):
        sims = _unit_rows(syn[start : start + chunk]) @ train.T
        best[start : start + chunk], index[start : start + chunk] = sims.max(dim=1)
    return best.numpy(), index.numpy()


def memorisation_summary(
    max_similarity: np.ndarray, nearest: np.ndarray, *, threshold: float = DEFAULT_THRESHOLD, top_k: int = 8
) -> dict[str, Any]:
    """Distribution of nearest-neighbour similarities, the flagged fraction and the top-k pairs."""
    sims = np.asarray(max_similarity, dtype=np.float64)
    if sims.size == 0:
        raise UserError("memorisation check needs at least one synthetic image")
    order = np.argsort(-sims, kind="stable")[:top_k]
    flagged = sims > threshold
    return {
        "threshold": float(threshold),
        "n_synthetic": int(sims.size),
        "n_flagged": int(flagged.sum()),
        "fraction_above_threshold": float(flagged.mean()),
        "similarity": {
            "max": float(sims.max()),
            "mean": float(sims.mean()),
            "quantiles": {str(q): float(np.quantile(sims, q)) for q in (0.5, 0.9, 0.99)},
            "histogram": dict(zip(("counts", "edges"), (h.tolist() for h in np.histogram(sims, bins=20, range=(-1, 1))))),
        },
        "max_similarity": sims.tolist(),  # one per synthetic image, in order (read by hub.guard)
        "nearest_training_index": np.asarray(nearest).tolist(),
        "flagged_synthetic_indices": np.flatnonzero(flagged).tolist(),
        "top_pairs": [
            {"synthetic_index": int(i), "training_index": int(nearest[i]), "similarity": float(sims[i])} for i in order
        ],
    }


def save_pair_grid(
    pairs: Sequence[dict[str, Any]],
    training_images: Sequence[Any],
    synthetic_images: Sequence[Any],
    path: str | os.PathLike,
    *,
    tile: int = 160,
) -> Path:
    """Save the closest pairs as a PNG: one row per pair, synthetic left, training neighbour right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_cxr_diffusion.io import atomic_path
    from hf_cxr_diffusion.metrics.features import preprocess

    if not pairs:
        raise UserError("no pairs to draw")

    def thumb(image: Any) -> np.ndarray:
        x = preprocess(image)[0].numpy()
        return x[:: max(1, x.shape[0] // tile), :: max(1, x.shape[1] // tile)]

    fig, axes = plt.subplots(len(pairs), 2, figsize=(4.4, 2.2 * len(pairs)), dpi=100, squeeze=False)
    for row, pair in zip(axes, pairs):
        for ax, image, title in (
            (row[0], synthetic_images[pair["synthetic_index"]], f"synthetic #{pair['synthetic_index']}"),
            (row[1], training_images[pair["training_index"]], f"training #{pair['training_index']}  cos={pair['similarity']:.3f}"),
        ):
            ax.imshow(thumb(image), cmap="gray", vmin=-1024, vmax=1024)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def memorisation(
    train_features: np.ndarray,
    synthetic_features: np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    top_k: int = 8,
    center: bool = True,
    training_images: Sequence[Any] | None = None,
    synthetic_images: Sequence[Any] | None = None,
    grid_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Nearest-training-neighbour report; writes the top-k pair grid when images and a path are given."""
    sims, nearest = nearest_training_neighbours(train_features, synthetic_features, center=center)
    report = memorisation_summary(sims, nearest, threshold=threshold, top_k=top_k)
    report["centered"] = center
    report["n_training"] = int(len(train_features))
    if grid_path is not None and training_images is not None and synthetic_images is not None:
        report["grid"] = str(save_pair_grid(report["top_pairs"], training_images, synthetic_images, grid_path))
    return report
