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



#: line_chart's series colours (matplotlib's first defaults)
LINE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(1, target - 1)
    base = 10 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    first = math.floor(lo / step + 1e-9) * step
    return [first + i * step for i in range(int(math.ceil((hi - first) / step - 1e-9)) + 1)]


def _tick_label(v: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{v:.{decimals}f}"


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float], int]], path: str | Path, *, xlabel: str,
               ylabel: str, title: str, size: tuple[int, int] = (600, 350)) -> Path:
    """Lines ``(label, xs, ys, width)`` on labelled, ticked axes with a legend, saved as a PNG atomically.

    Drawn with PIL alone (no matplotlib import: a training run writes one of these and ~1 s of import
    would be a noticeable part of a short run's wall time)."""
    from PIL import ImageDraw, ImageFont

    from hf_cxr_diffusion.io import atomic_path

    w, h = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font, title_font = ImageFont.load_default(11), ImageFont.load_default(13)
    left, right, top, bottom = 62, w - 12, 28, h - 42
    xs_all = [float(x) for _, xs, ys, _ in series for x, y in zip(xs, ys) if math.isfinite(y)]
    ys_all = [float(y) for _, _, ys, _ in series for y in ys if math.isfinite(y)]
    xt = nice_ticks(min(xs_all), max(xs_all)) if xs_all else [0.0, 1.0]
    yt = nice_ticks(min(ys_all), max(ys_all)) if ys_all else [0.0, 1.0]
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def px(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    for ticks, vertical in ((xt, True), (yt, False)):
        step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
        for t in ticks:
            label = _tick_label(t, step)
            if vertical:
                x, _ = px(t, y0)
                draw.line([(x, bottom), (x, bottom + 4)], fill="black")
                draw.text((x, bottom + 6), label, fill="black", font=font, anchor="ma")
            else:
                _, y = px(x0, t)
                draw.line([(left - 4, y), (left, y)], fill="black")
                draw.text((left - 6, y), label, fill="black", font=font, anchor="rm")
    for i, (_, xs, ys, width) in enumerate(series):
        points = [px(float(x), float(y)) for x, y in zip(xs, ys) if math.isfinite(y)]
        colour = LINE_COLOURS[i % len(LINE_COLOURS)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=width, joint="curve")
        elif points:
            (x, y), r = points[0], width + 1
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    draw.rectangle([left, top, right, bottom], outline="black")
    for i, (label, *_rest) in enumerate(series):  # legend, top right
        y = top + 10 + 16 * i
        draw.line([(right - 150, y), (right - 128, y)], fill=LINE_COLOURS[i % len(LINE_COLOURS)], width=2)
        draw.text((right - 122, y), label, fill="black", font=font, anchor="lm")
    draw.text((w / 2, 6), title, fill="black", font=title_font, anchor="ma")
    draw.text(((left + right) / 2, h - 6), xlabel, fill="black", font=font, anchor="md")
    label = Image.new("RGB", (int(draw.textlength(ylabel, font=font)) + 4, 16), "white")
    ImageDraw.Draw(label).text((2, 1), ylabel, fill="black", font=font)
    img.paste(label.rotate(90, expand=True), (4, int((top + bottom) / 2 - label.width / 2)))
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


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
