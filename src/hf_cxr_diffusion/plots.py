"""Small plotting helpers shared by the stages (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def image_grid(images: Sequence[Image.Image], ncols: int | None = None, pad: int = 2) -> Image.Image:
    """Tile ``images`` (resized to the first one's size) into one grayscale-or-RGB grid image."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    ncols = ncols or math.ceil(math.sqrt(len(images)))
    nrows = math.ceil(len(images) / ncols)
    mode = "RGB" if any(im.mode not in ("L", "I;16", "I") for im in images) else "L"
    w, h = images[0].size
    grid = Image.new(mode, (ncols * (w + pad) + pad, nrows * (h + pad) + pad), color=0)
    for i, im in enumerate(images):
        tile = im.convert(mode).resize((w, h))
        grid.paste(tile, (pad + (i % ncols) * (w + pad), pad + (i // ncols) * (h + pad)))
    return grid


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    smooth: int = 0,
) -> Path:
    """Plot named ``(x, y)`` series to a PNG; ``smooth`` > 1 adds a moving average of that window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for name, (x, y) in series.items():
        line = ax.plot(x, y, alpha=0.35 if smooth > 1 else 1.0, label=None if smooth > 1 else name)[0]
        if smooth > 1 and len(y) >= smooth:
            kernel = np.ones(smooth) / smooth
            ax.plot(np.asarray(x)[smooth - 1 :], np.convolve(y, kernel, mode="valid"), color=line.get_color(), label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
