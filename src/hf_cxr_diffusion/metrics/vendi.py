"""Vendi score (Friedman & Dieng, "The Vendi Score: A Diversity Evaluation Metric for Machine
Learning", TMLR 2023; arXiv 2210.02410), of order q, through the d x d dual; and the :class:`Vendi`
accumulator.

``VS_q = exp(H_q(λ))`` where ``λ`` are the eigenvalues of ``K / n`` and ``H_q`` the Rényi entropy
of order q (Shannon at q = 1; ``q = inf`` is the limit ``1 / max λ``, Pasarkar & Dieng 2023). With
the cosine kernel ``K = X̂ X̂ᵀ`` (rows unit norm) the non-zero eigenvalues of ``K / n`` are those of
the d x d ``X̂ᵀ X̂ / n`` (:class:`~hf_cxr_diffusion.metrics.stats.GramStats`): n = 25,000+ costs one
d x d eigensolve. ``Σ λ^q`` is taken in log space, so a large q (1e6) gives ``≈ 1 / max λ``, not inf.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import scipy.linalg
from scipy.special import logsumexp

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.metrics.base import Batch, Context, Metric
from hf_cxr_diffusion.metrics.conditions import KeyedStats, Reservoir
from hf_cxr_diffusion.metrics.stats import GramStats, _rows

#: eigenvalues below ``RANK_TOL * len(λ) * max(λ)`` are numerical zeros (numpy's matrix_rank rule)
RANK_TOL = float(np.finfo(np.float64).eps)
#: per-condition sample cap for Vendi at a fixed n (the Pixels-Under-Pressure protocol uses 5,000)
CONDITION_CAP = 5000


def check_order(q: float) -> float:
    """``q`` as a float, or :class:`UserError` unless ``q > 0`` (``inf`` is the limit ``1 / max λ``)."""
    try:
        q = float(q)
    except (TypeError, ValueError) as err:
        raise UserError(f"Vendi order q must be a number > 0, got {q!r}") from err
    if math.isnan(q) or q <= 0:
        raise UserError(f"Vendi order q must be > 0 (or inf for 1 / max eigenvalue), got {q}")
    return q


def vendi_from_eigenvalues(eigenvalues: np.ndarray, q: float = 1.0) -> float:
    """``exp`` of the order-q Rényi entropy of the (probability) eigenvalues of ``K / n``."""
    q = check_order(q)
    w = np.asarray(eigenvalues, dtype=np.float64)
    if w.size == 0 or not np.isfinite(w).all():
        raise UserError("Vendi score of an empty or non-finite spectrum")
    p = w[w > RANK_TOL * w.size * w.max()]
    p = p / p.sum()
    if math.isinf(q):
        return float(1.0 / p.max())
    if q == 1.0:
        return float(np.exp(-(p * np.log(p)).sum()))
    return float(np.exp(logsumexp(q * np.log(p)) / (1.0 - q)))


def vendi_from_stats(stats: GramStats, q: float = 1.0) -> float:
    """Vendi score from streamed :class:`GramStats` (float64 eigensolve of the d x d dual)."""
    return vendi_from_eigenvalues(scipy.linalg.eigvalsh(stats.second_moment, check_finite=False, overwrite_a=True), q)


def vendi_score(features: np.ndarray, q: float = 1.0, *, exact: bool = False) -> float:
    """Vendi score of ``n x d`` features with the cosine kernel.

    Uses whichever of the n x n kernel and the d x d dual is smaller (same non-zero spectrum);
    ``exact=True`` keeps the dual's products in float64 (default: float32 blocks, float64 sums).
    """
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] == 0:
        raise UserError(f"features of shape {x.shape}; expected n x d with n >= 1")
    check_order(q)
    if x.shape[0] >= x.shape[1]:
        return vendi_from_stats(GramStats(x.shape[1], exact=exact).update(x), q)
    xn = _rows(x, x.shape[1]).astype(np.float64)
    xn /= np.maximum(np.linalg.norm(xn, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    return vendi_from_eigenvalues(scipy.linalg.eigvalsh(xn @ xn.T / len(xn), check_finite=False), q)


class Vendi(Metric):
    """Vendi score of order ``q`` (cosine kernel) of the synthetic set, and of the real set as a reference.

    Per condition (``by_condition``) it is compared at a fixed n: ``n_per_condition``, default the
    smallest condition's count, from a seeded uniform sample of at most 5,000 per condition.
    """

    name = "vendi"
    higher_is_better: ClassVar[bool] = True
    optional = ("real",)

    def __init__(self, context: Context, *, q: float = 1.0, by_condition: bool = False,
                 n_per_condition: int | None = None, seed: int = 0, exact: bool = False) -> None:
        super().__init__(context)
        self.q = check_order(q)
        d = context.feature_dim
        p = context.protocol
        self.synthetic, self.real = GramStats(d, exact=exact, protocol=p), GramStats(d, exact=exact, protocol=p)
        self.by_condition, self.n_per_condition = by_condition, n_per_condition
        cap = n_per_condition or CONDITION_CAP
        self.samples = KeyedStats(lambda: Reservoir(cap, seed + len(self.samples.items)))

    @classmethod
    def from_options(cls, context: Context, options: Any) -> Vendi:
        return cls(context, q=options.vendi_q, by_condition=options.by_condition,
                   n_per_condition=options.vendi_n_per_condition, seed=options.seed)

    def update(self, batch: Batch) -> None:
        (self.real if batch.side == "real" else self.synthetic).update(batch.features)
        if self.by_condition and batch.side == "synthetic":
            self.samples.update_by_label(batch.features, batch.labels)

    def _states(self) -> list[Any]:
        return [self.synthetic, self.real, self.samples]

    def compute(self) -> dict[str, Any]:
        if self.synthetic.n == 0:
            raise UserError("Vendi needs at least one synthetic image")
        out: dict[str, Any] = {
            "score": vendi_from_stats(self.synthetic, self.q),
            "score_real": vendi_from_stats(self.real, self.q) if self.real.n else None,
            "q": self.q, "kernel": "cosine", "n_synthetic": self.synthetic.n, "n_real": self.real.n, **self.carried(),
        }
        if self.by_condition:
            sizes = {c: len(r.rows) for c, r in self.samples.items.items()}
            m = self.n_per_condition or (min(sizes.values()) if sizes else 0)
            rows = {}
            for cond, reservoir in sorted(self.samples.items.items()):
                sample = reservoir.sample(m)
                rows[cond] = {"vendi": vendi_score(sample, self.q), "vendi_n": len(sample), "below_fixed_n": len(sample) < m}
            out["by_condition"] = rows
        return out
