"""What the memorisation check reports: the similarity distribution, the flagged images, the closest pairs as a grid."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hf_cxr_diffusion.errors import UserError


def memorisation_summary(max_similarity: np.ndarray, nearest: np.ndarray, *, threshold: float, top_k: int = 8) -> dict[str, Any]:
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
        "score": float(flagged.mean()),
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
    from hf_cxr_diffusion.metrics.decode import to_grayscale

    if not pairs:
        raise UserError("no pairs to draw")

    def thumb(image: Any) -> np.ndarray:
        gray, maxval = to_grayscale(image)
        x = np.asarray(gray, dtype=np.float64) / maxval
        return x[:: max(1, x.shape[0] // tile), :: max(1, x.shape[1] // tile)]

    fig, axes = plt.subplots(len(pairs), 2, figsize=(4.4, 2.2 * len(pairs)), dpi=100, squeeze=False)
    for row, pair in zip(axes, pairs):
        for ax, image, title in (
            (row[0], synthetic_images[pair["synthetic_index"]], f"synthetic #{pair['synthetic_index']}"),
            (row[1], training_images[pair["training_index"]], f"training #{pair['training_index']}  cos={pair['similarity']:.3f}"),
        ):
            ax.imshow(thumb(image), cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
