"""Image and plot helpers shared by the stages (image grids, labelled grids, bar charts, annotated heatmaps)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
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



def save_figure(fig, path) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    from hf_cxr_diffusion.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def labelled_grid(rows: Sequence[Sequence[Image.Image]], row_labels: Sequence[str], column_groups: Sequence[tuple[str, int]],
                  path, title: str = "") -> None:
    """Images in rows (e.g. conditions) and titled column groups (e.g. base | fine-tuned), saved as a PNG.

    A red rule separates groups only where a group spans several columns (between one-column groups it marks nothing).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = max(len(r) for r in rows)
    height = 1.15 * len(rows) + 0.6
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.1 * ncols + 1.6, height), squeeze=False)
    edges = [sum(n for _, n in column_groups[:k]) for k in range(len(column_groups) + 1)]
    separated = any(n > 1 for _, n in column_groups)
    for i, row in enumerate(rows):
        for j in range(ncols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                ax.imshow(row[j].convert("L"), cmap="gray", vmin=0, vmax=255)
            if separated and j in edges[1:-1]:
                ax.spines["left"].set(color="#d62728", linewidth=2)
        axes[i][0].set_ylabel(row_labels[i], fontsize=8, rotation=0, ha="right", va="center")
    for (name, _), start in zip(column_groups, edges):
        axes[0][start].set_title(name, fontsize=9, loc="left")
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top")
    # The title and the group names take a fixed 0.6 in at the top, whatever the number of rows.
    fig.subplots_adjust(wspace=0.04, hspace=0.04, top=1 - 0.6 / height)
    save_figure(fig, path)


def grouped_bars(groups: Sequence[str], series: dict[str, Sequence[float]], path, *, ylabel: str, title: str,
                 ylim: tuple[float, float] | None = None) -> None:
    """One cluster of bars per group (e.g. condition), one bar per series (e.g. base, fine-tuned), values printed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(groups))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(1.6 * len(groups) + 1.5, 3.2))
    for k, (name, values) in enumerate(series.items()):
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=name)
        for bar, v in zip(bars, values):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=7)
    save_figure(fig, path)


@dataclasses.dataclass
class HeatmapPanel:
    """One annotated heatmap: ``values[i, j]`` at row ``rows[i]``, column ``columns[j]`` (NaN: empty cell)."""

    title: str
    rows: list[str]
    columns: list[str]
    values: np.ndarray
    xlabel: str = ""
    ylabel: str = ""


def plot_heatmaps(panels: Sequence[HeatmapPanel], path: str | Path, *, colorbar_label: str) -> Path:
    """Write ``panels`` one above the other, every cell annotated with its value, as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("plot_heatmaps needs at least one panel")
    width = max(6.0, 0.45 * max(len(p.columns) for p in panels) + 3)
    heights = [max(1.8, 0.35 * len(p.rows) + 1.4) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, sum(heights)), squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        grid = np.asarray(panel.values, dtype=float)
        image = ax.imshow(grid, cmap="viridis", aspect="auto")
        finite = grid[np.isfinite(grid)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for (r, c), value in np.ndenumerate(grid):
            if np.isfinite(value):
                ax.text(c, r, f"{value:g}", ha="center", va="center", color="black" if value > middle else "white", fontsize=8)
        tilt = len(panel.columns) > 12
        ax.set_yticks(range(len(panel.rows)), panel.rows, fontsize=8)
        ax.set_xticks(range(len(panel.columns)), panel.columns, rotation=60 if tilt else 0, ha="right" if tilt else "center", fontsize=8)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        fig.colorbar(image, ax=ax, label=colorbar_label)
    fig.tight_layout()
    save_figure(fig, path)
    return Path(path)
