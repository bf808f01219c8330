"""Image helpers shared by the stages."""

from __future__ import annotations

import math
from collections.abc import Sequence

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

