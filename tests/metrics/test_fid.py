"""Fréchet distance vs pytorch-fid and a float64 scipy reference; streaming and merged statistics."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from pytorch_fid.fid_score import calculate_frechet_distance

from hf_cxr_diffusion.metrics import FeatureStats, fid_from_features, fid_from_stats, frechet_distance


def _pair(n1: int, n2: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n1, d)) @ mix, (rng.normal(size=(n2, d)) * 1.2 + 0.1) @ mix


@pytest.mark.parametrize("n1,n2,d", [(400, 300, 64), (40, 30, 64), (50, 70, 256)], ids=["n>d", "n<d", "n<d-256"])
def test_matches_pytorch_fid(n1: int, n2: int, d: int) -> None:
    a, b = _pair(n1, n2, d)
    ref = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert fid_from_features(a, b) == pytest.approx(ref, rel=1e-6)


def test_matches_float64_scipy_reference() -> None:
    a, b = _pair(300, 200, 32, seed=1)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root1 = scipy.linalg.sqrtm(s1).real
    tr_covmean = np.trace(scipy.linalg.sqrtm(root1 @ s2 @ root1).real)
    diff = a.mean(0) - b.mean(0)
    ref = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    assert frechet_distance(a.mean(0), s1, b.mean(0), s2) == pytest.approx(ref, rel=1e-9)


def test_self_distance_is_zero_and_shift_increases_it() -> None:
    a, _ = _pair(200, 10, 32, seed=2)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-8)
    shifts = [fid_from_features(a, a + s) for s in (0.1, 0.5, 1.0)]
    assert 0 < shifts[0] < shifts[1] < shifts[2]
    assert shifts[2] == pytest.approx(32 * 1.0**2, rel=1e-6)  # a pure shift adds |delta|^2


def test_streaming_chunks_and_merged_shards_equal_one_shot(tmp_path) -> None:
    a, b = _pair(257, 190, 48, seed=3)
    one = fid_from_features(a, b)
    chunked_a, chunked_b = FeatureStats(48), FeatureStats(48)
    for chunk in np.array_split(a, 7):
        chunked_a.update(chunk)
    for chunk in np.array_split(b, 3):
        chunked_b.update(chunk)
    assert fid_from_stats(chunked_a, chunked_b) == pytest.approx(one, rel=1e-10)
    shard1, shard2 = FeatureStats(48).update(a[:100]), FeatureStats(48).update(a[100:])
    shard2 = FeatureStats.load(shard2.save(tmp_path / "shard2.npz"))  # shards travel as files
    merged = shard1.merge(shard2)
    assert merged.n == len(a)
    assert fid_from_stats(merged, FeatureStats(48).update(b)) == pytest.approx(one, rel=1e-10)
    np.testing.assert_allclose(merged.covariance, np.cov(a, rowvar=False), rtol=1e-10, atol=1e-12)


def test_incompatible_merge_and_bad_input_raise(tmp_path) -> None:
    from hf_cxr_diffusion.errors import UserError

    with pytest.raises(UserError):
        FeatureStats(8).merge(FeatureStats(9))
    x = np.random.default_rng(0).normal(size=(5, 8))
    v1, v2 = FeatureStats(8, protocol="xrv-fid-v1").update(x), FeatureStats(8, protocol="xrv-fid-v2").update(x)
    with pytest.raises(UserError, match="xrv-fid-v1.*xrv-fid-v2|xrv-fid-v2.*xrv-fid-v1"):
        fid_from_stats(v1, v2)
    with pytest.raises(UserError, match="'xrv-fid-v2' and of protocol 'xrv-fid-v1'"):
        v2.merge(v1)
    with pytest.raises(UserError, match="'xrv-fid-v1' and of protocol 'xrv-fid-v2'"):
        FeatureStats.load(v1.save(tmp_path / "v1.npz")).merge(FeatureStats.load(v2.save(tmp_path / "v2.npz")))
    with pytest.raises(UserError):
        FeatureStats(8).update(np.full((2, 8), np.nan))
    with pytest.raises(UserError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def _audit_case(case: str, n: int = 40, d: int = 64) -> tuple[np.ndarray, np.ndarray, float]:
    """Features X and Y = a (X - m) + m + delta with a closed-form FID: |(1 - a) zbar - delta|² + (1 - a)² tr cov(Z).

    Z is dyadic (multiples of 2^-20), so X = m + Z and Y are exact in float64 even at m = 1e6.
    """
    rng = np.random.default_rng({"n<d": 0, "near-singular": 1, "mean/std 1e6": 2}[case])
    if case == "near-singular":
        n = 400
        basis = rng.normal(size=(d, d))
        scales = np.r_[np.ones(d - 8), np.full(8, 1e-7)]  # 8 directions of variance ~1e-14
        z = rng.normal(size=(n, d)) * scales @ basis.T / np.sqrt(d)
    else:
        z = rng.normal(size=(n if case == "n<d" else 500, d))
    z = np.round(z * 2.0**20) / 2.0**20
    m = 1e6 if case == "mean/std 1e6" else 0.5
    a, delta = 1.5, np.round(rng.normal(size=d) * 2.0**10) / 2.0**10
    x, y = z + m, a * z + m + delta
    zbar = z.mean(0)
    zc = z - zbar
    ref = float(((1 - a) * zbar - delta) @ ((1 - a) * zbar - delta) + (1 - a) ** 2 * (zc * zc).sum() / (len(z) - 1))
    return x, y, ref


@pytest.mark.parametrize("case", ["n<d", "near-singular", "mean/std 1e6"])
def test_audit_cases_within_1e10(case: str) -> None:
    x, y, ref = _audit_case(case)
    stats_x, stats_y = FeatureStats(x.shape[1]), FeatureStats(y.shape[1])
    for chunk in np.array_split(x, 3):  # streamed, shift = the first batch's mean
        stats_x.update(chunk)
    stats_y.update(y)
    assert fid_from_stats(stats_x, stats_y) == pytest.approx(ref, rel=1e-10)


def test_shifted_sums_keep_the_covariance_at_mean_over_std_1e6() -> None:
    z = np.round(np.random.default_rng(7).normal(size=(300, 16)) * 2.0**20) / 2.0**20
    stats = FeatureStats(16)
    for chunk in np.array_split(z + 1e6, 4):
        stats.update(chunk)
    np.testing.assert_allclose(stats.covariance, np.cov(z, rowvar=False), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats.mean - 1e6, z.mean(0), rtol=0, atol=1e-9)


def test_merge_of_shards_with_different_shifts_and_a_fid_reason_for_one_image() -> None:
    from hf_cxr_diffusion.metrics.fid import fid_or_reason

    a, b = _pair(120, 90, 12, seed=5)
    left, right = FeatureStats(12).update(a[:30]), FeatureStats(12).update(a[30:] + 0.0)
    merged = left.merge(right)
    np.testing.assert_allclose(merged.covariance, np.cov(a, rowvar=False), rtol=1e-10, atol=1e-12)
    score, reason = fid_or_reason(FeatureStats(12).update(a[:1]), FeatureStats(12).update(b))
    assert score is None and "real has 1" in reason


def test_reused_block_equals_np_cov_across_block_boundaries(tmp_path, monkeypatch) -> None:
    """Rows buffered into a 7-row block: batches that fill, cross and exactly end blocks; state read mid-block."""
    from hf_cxr_diffusion.metrics import stats as stats_module

    monkeypatch.setattr(stats_module, "BLOCK", 7)
    a = (_pair(61, 2, 12, seed=5)[0] + 50.0).astype(np.float32).astype(np.float64)  # a float32 batch holds the same values
    stats = FeatureStats(12)
    for lo, hi in [(0, 3), (3, 7), (7, 8), (8, 30), (30, 44)]:
        stats.update(a[lo:hi].astype(np.float32) if lo == 7 else a[lo:hi])
    np.testing.assert_allclose(stats.covariance, np.cov(a[:44], rowvar=False), rtol=1e-10, atol=1e-12)  # 2 rows pending
    saved = FeatureStats.load(stats.save(tmp_path / "mid.npz"))
    for part in (stats, saved):
        part.update(a[44:])
        np.testing.assert_allclose(part.covariance, np.cov(a, rowvar=False), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(part.mean, a.mean(0), rtol=1e-12)
    assert np.array_equal(stats.covariance, stats.covariance.T)


def test_upper_triangle_mirrored_in_strips_across_strip_boundaries(monkeypatch) -> None:
    """syrk fills the upper triangle; the lower one is mirrored strip by strip (3-row strips at d = 10, 64 at 300)."""
    from hf_cxr_diffusion.metrics import stats as stats_module

    upper = np.triu(np.random.default_rng(8).normal(size=(10, 10)))
    mirrored = upper + 17.0 * np.tril(np.ones((10, 10)), -1)  # a stale lower triangle must be overwritten
    stats_module._mirror_upper(mirrored, step=3)
    assert np.array_equal(mirrored, upper + np.triu(upper, 1).T)
    monkeypatch.setattr(stats_module, "BLOCK", 150)
    a = _pair(400, 2, 300, seed=9)[0]
    stats = FeatureStats(300).update(a[:170])
    np.testing.assert_allclose(stats.covariance, np.cov(a[:170], rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats.outer, stats.outer.T, rtol=0, atol=0)  # the sums, mirrored when read
    stats.update(a[170:])  # more blocks into the upper triangle after the lower one was mirrored
    np.testing.assert_allclose(stats.covariance, np.cov(a, rowvar=False), rtol=1e-10, atol=1e-12)
    assert np.array_equal(stats.covariance, stats.covariance.T)
