"""Fréchet distance between two Gaussians (Heusel et al., "GANs Trained by a Two Time-Scale Update
Rule Converge to a Local Nash Equilibrium", NeurIPS 2017), with pytorch-fid's semantics.

``d² = |mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)``. pytorch-fid takes ``scipy.linalg.sqrtm``
of the non-symmetric product; we use the equivalent symmetric form
``tr sqrt(S1 S2) = Σ sqrt(eig(sqrt(S1) S2 sqrt(S1)))`` (the two matrices are similar), which is
faster, real by construction and robust to rank-deficient covariances (n < d): eigenvalues
below zero from round-off are clipped to zero.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.metrics.stats import FeatureStats


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    w, v = scipy.linalg.eigh(sigma, check_finite=False, driver="evd")
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr sqrt(S1 S2)`` for symmetric PSD ``S1``, ``S2`` via a symmetric eigenproblem."""
    root = _psd_sqrt(sigma1)
    inner = root @ sigma2 @ root
    w = scipy.linalg.eigvalsh((inner + inner.T) / 2, check_finite=False)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (float64)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise UserError(f"mismatched statistics: means {mu1.shape}/{mu2.shape}, covariances {sigma1.shape}/{sigma2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        raise UserError("statistics contain NaN or inf")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))


def fid_from_stats(real: FeatureStats, synthetic: FeatureStats) -> float:
    """Fréchet distance between the Gaussians fitted to two streamed feature sets."""
    return frechet_distance(real.mean, real.covariance, synthetic.mean, synthetic.covariance)


def fid_from_features(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Fréchet distance between two ``n x d`` feature arrays."""
    a = FeatureStats(real.shape[1]).update(real)
    b = FeatureStats(synthetic.shape[1]).update(synthetic)
    return fid_from_stats(a, b)
