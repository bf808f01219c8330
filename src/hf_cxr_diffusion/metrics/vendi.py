"""Vendi score (Friedman & Dieng, "The Vendi Score: A Diversity Evaluation Metric for Machine
Learning", TMLR 2023; arXiv 2210.02410), of order q, computed through the d x d dual.

``VS_q = exp(H_q(λ))`` where ``λ`` are the eigenvalues of ``K / n`` and ``H_q`` the Rényi entropy
of order q (Shannon at q = 1, ``-log max λ`` at q = inf). With the cosine kernel
``K = X̂ X̂ᵀ`` (rows of ``X̂`` unit norm), the non-zero eigenvalues of ``K / n`` are those of the
d x d matrix ``X̂ᵀ X̂ / n``, which :class:`~hf_cxr_diffusion.metrics.stats.FeatureStats` with
``normalize=True`` accumulates in a stream: n = 25,000+ costs one d x d eigensolve.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.metrics.stats import FeatureStats

#: eigenvalues below ``RANK_TOL * len(λ) * max(λ)`` are numerical zeros (numpy's matrix_rank rule)
RANK_TOL = float(np.finfo(np.float64).eps)


def _check_order(q: float) -> float:
    q = float(q)
    if not (q > 0 or math.isinf(q)) or math.isnan(q):
        raise UserError(f"Vendi order q must be > 0 or inf, got {q}")
    return q


def vendi_from_eigenvalues(eigenvalues: np.ndarray, q: float = 1.0) -> float:
    """``exp`` of the order-q Rényi entropy of the (probability) eigenvalues of ``K / n``."""
    q = _check_order(q)
    w = np.asarray(eigenvalues, dtype=np.float64)
    if w.size == 0:
        raise UserError("Vendi score of an empty spectrum")
    p = w[w > RANK_TOL * w.size * w.max()]
    if math.isinf(q):
        return float(1.0 / p.max())
    if q == 1.0:
        return float(np.exp(-(p * np.log(p)).sum()))
    return float(np.exp(np.log((p**q).sum()) / (1.0 - q)))


def vendi_from_stats(stats: FeatureStats, q: float = 1.0) -> float:
    """Vendi score from streamed ``FeatureStats(normalize=True)`` (cosine) or raw (linear kernel)."""
    w = scipy.linalg.eigvalsh(stats.second_moment, check_finite=False)
    return vendi_from_eigenvalues(w, q)


def vendi_score(features: np.ndarray, q: float = 1.0, *, normalize: bool = True) -> float:
    """Vendi score of ``n x d`` features with the cosine (``normalize=True``) or linear kernel.

    Uses whichever of the n x n kernel and the d x d dual is smaller (same non-zero spectrum).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise UserError(f"features of shape {x.shape}; expected n x d with n >= 1")
    if x.shape[0] >= x.shape[1]:
        return vendi_from_stats(FeatureStats(x.shape[1], normalize=normalize).update(x), q)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    return vendi_from_eigenvalues(scipy.linalg.eigvalsh(x @ x.T / len(x), check_finite=False), q)
