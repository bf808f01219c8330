"""Vendi score through the d x d dual vs a brute-force n x n eigensolve and vendi-score's score_dual."""

from __future__ import annotations

import math

import numpy as np
import pytest
from vendi_score import vendi

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.metrics import GramStats, vendi_from_stats, vendi_score


def _brute_force(x: np.ndarray, q: float) -> float:
    """Friedman & Dieng's definition on the n x n cosine kernel, written out independently."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = np.linalg.eigvalsh(xn @ xn.T / len(x))
    p = w[w > 1e-12]
    if math.isinf(q):
        return 1.0 / p.max()
    if q == 1:
        return float(np.exp(-(p * np.log(p)).sum()))
    return float(np.exp(np.log((p**q).sum()) / (1 - q)))


@pytest.mark.parametrize("n,d", [(300, 64), (40, 128)], ids=["n>d", "n<d"])
@pytest.mark.parametrize("q", [0.5, 1.0, 2.0, math.inf])
def test_matches_brute_force(n: int, d: int, q: float) -> None:
    x = np.abs(np.random.default_rng(n + d).normal(size=(n, d)))
    assert vendi_score(x, q) == pytest.approx(_brute_force(x, q), rel=1e-6)


def test_matches_vendi_score_package_q1() -> None:
    x = np.random.default_rng(1).normal(size=(500, 96))
    assert vendi_score(x, 1.0) == pytest.approx(vendi.score_dual(x, q=1), rel=1e-6)


def test_order_is_honoured_and_bounds() -> None:
    x = np.abs(np.random.default_rng(2).normal(size=(100, 32)))
    scores = [vendi_score(x, q) for q in (0.5, 1.0, 2.0, math.inf)]
    assert all(a > b for a, b in zip(scores, scores[1:]))  # Rényi entropy decreases in q
    assert vendi_score(np.ones((10, 5)), 1.0) == pytest.approx(1.0)
    assert vendi_score(np.eye(7), 1.0) == pytest.approx(7.0)
    with pytest.raises(UserError):
        vendi_score(x, 0.0)


def test_streaming_equals_one_shot_and_float32_blocks_stay_within_1e8() -> None:
    x = np.random.default_rng(3).normal(size=(211, 40))
    stats = GramStats(40, exact=True)
    for chunk in np.array_split(x, 5):
        stats.update(chunk)
    assert vendi_from_stats(stats, 2.0) == pytest.approx(vendi_score(x, 2.0, exact=True), rel=1e-12)
    rng = np.random.default_rng(4)  # correlated, sparse, non-negative: shaped like pooled ReLU activations
    feats = np.maximum(rng.normal(size=(6000, 16)) @ rng.normal(size=(256, 16)).T / 4 + rng.normal(size=(6000, 256)) * 0.3, 0)
    for q in (0.5, 1.0, 2.0, math.inf):
        assert vendi_score(feats.astype(np.float32), q) == pytest.approx(vendi_score(feats, q, exact=True), rel=1e-8)


def test_large_order_is_finite_and_bad_input_is_a_user_error() -> None:
    x = np.abs(np.random.default_rng(5).normal(size=(50, 8)))
    assert vendi_score(x, 1e6) == pytest.approx(vendi_score(x, math.inf), rel=1e-4)  # no overflow to inf
    for q in (0.0, -1.0, -math.inf, float("nan")):
        with pytest.raises(UserError, match=r"^Vendi order q must be > 0 \(or inf for 1 / max eigenvalue\), got"):
            vendi_score(x, q)
    with pytest.raises(UserError, match="^Vendi order q must be a number > 0, got 'two'"):
        vendi_score(x, "two")  # type: ignore[arg-type]
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(UserError, match="NaN"):
        vendi_score(bad, 1.0)
    with pytest.raises(UserError, match="NaN"):
        vendi_score(bad[:5], 1.0)  # the n < d path too


def test_reused_block_across_block_boundaries(monkeypatch) -> None:
    """Rows scaled into a 5-row block (float32 and float64): the same second moment as one float64 product."""
    from hf_cxr_diffusion.metrics import stats as stats_module

    monkeypatch.setattr(stats_module, "BLOCK", 5)
    monkeypatch.setattr(stats_module, "BLOCK_FLOAT32", 5)
    x = np.abs(np.random.default_rng(6).normal(size=(38, 9))) + 0.1
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    for exact, rtol in ((True, 1e-13), (False, 1e-6)):
        stats = GramStats(9, exact=exact)
        for lo, hi in [(0, 2), (2, 5), (5, 17), (17, 18), (18, 38)]:
            stats.update(x[lo:hi])
            if hi == 17:  # read mid-stream: later blocks go into the upper triangle of a mirrored, full matrix
                np.testing.assert_allclose(stats.second_moment, unit[:17].T @ unit[:17] / 17, rtol=rtol)
        np.testing.assert_allclose(stats.second_moment, unit.T @ unit / len(x), rtol=rtol)
        assert np.array_equal(stats.second_moment, stats.second_moment.T)
        merged = GramStats(9, exact=exact).update(x[:3]).merge(GramStats(9, exact=exact).update(x[3:]))
        np.testing.assert_allclose(merged.second_moment, stats.second_moment, rtol=rtol)


def test_huge_finite_float32_rows_are_scaled_and_nan_rows_refused() -> None:
    """Row norms come from float32 squares; a square above float32's range falls back to float64, NaN/inf is refused."""
    x = np.abs(np.random.default_rng(7).normal(size=(60, 8))).astype(np.float32)
    x[3] *= np.float32(1e20)  # finite, but its squares overflow float32
    assert vendi_score(x, 1.0) == pytest.approx(vendi_score(x.astype(np.float64), 1.0, exact=True), rel=1e-6)
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[5, 2] = bad
        stats = GramStats(8)
        with pytest.raises(UserError, match="features contain NaN or inf"):
            stats.update(y)
        assert stats.n == 0
