"""loss_curve.png is drawn with PIL (plots.line_chart): both series appear, ticks are round and cover the data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from hf_cxr_diffusion.plots import LINE_COLOURS, nice_ticks
from hf_cxr_diffusion.training.summary import plot_loss_curve


def _has_colour(path, colour: str) -> bool:
    rgb = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return bool((np.abs(rgb.astype(int) - target).max(axis=1) <= 8).any())


def test_long_history_draws_loss_and_moving_mean(tmp_path) -> None:
    history = [(i + 1, 1.0 + math.sin(i / 5)) for i in range(100)]
    path = plot_loss_curve(history, tmp_path / "c.png", "lora on d64")
    assert Image.open(path).size == (600, 350)
    assert _has_colour(path, LINE_COLOURS[0]) and _has_colour(path, LINE_COLOURS[1])
    assert not [p for p in tmp_path.iterdir() if p.name != "c.png"]  # atomic: no temporary left


@pytest.mark.parametrize("history", [[(1, 0.7)], [(i, 0.5) for i in range(1, 11)], [(1, float("nan")), (2, 0.3)], []])
def test_short_constant_or_empty_history_still_writes_a_png_without_moving_mean(tmp_path, history) -> None:
    path = plot_loss_curve(history, tmp_path / "c.png", "t")
    assert _has_colour(path, LINE_COLOURS[0]) == bool(history)
    assert not _has_colour(path, LINE_COLOURS[1])


@pytest.mark.parametrize(("lo", "hi"), [(0.0123, 1.87), (1, 150), (0.5, 0.5), (-3.2, 7.9), (1e-4, 3e-4)])
def test_nice_ticks_cover_the_range_with_a_round_step(lo, hi) -> None:
    ticks = nice_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi and 2 <= len(ticks) <= 12
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6
    assert all(abs((b - a) - step) < 1e-9 * max(1, abs(step)) for a, b in zip(ticks, ticks[1:]))
