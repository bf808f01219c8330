"""Streaming, mergeable feature statistics: float64 running sums of x and x xᵀ.

Memory is O(d²) whatever the number of images. Like a torchmetrics ``Metric`` state with
``dist_reduce_fx="sum"``, shards computed on different processes or machines combine by adding
(:meth:`FeatureStats.merge`, :meth:`FeatureStats.all_reduce`). The same object serves FID (mean and
covariance of raw features) and Vendi (the d x d dual of the cosine kernel, with
``normalize=True``: rows scaled to unit norm before summing).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_cxr_diffusion.errors import UserError


class FeatureStats:
    """Running ``n``, ``Σx`` and ``Σx xᵀ`` in float64 over feature rows."""

    def __init__(self, dim: int, *, normalize: bool = False, device: str | torch.device = "cpu") -> None:
        self.dim = int(dim)
        self.normalize = bool(normalize)
        self.n = 0
        self.sum = torch.zeros(self.dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=device)

    def update(self, features: torch.Tensor | np.ndarray) -> FeatureStats:
        """Add a ``B x d`` batch of features."""
        x = torch.as_tensor(features).to(self.sum.device, torch.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise UserError(f"features of shape {tuple(x.shape)}; expected B x {self.dim}")
        if not torch.isfinite(x).all():
            raise UserError("features contain NaN or inf; check the images and the feature extractor")
        if self.normalize:
            x = x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.outer.addmm_(x.T, x)
        return self

    def _check_compatible(self, other: FeatureStats) -> None:
        if (other.dim, other.normalize) != (self.dim, self.normalize):
            raise UserError(
                f"cannot merge statistics of dim {other.dim}/normalize={other.normalize} "
                f"into dim {self.dim}/normalize={self.normalize}"
            )

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another shard's sums in place (exact: sums are associative up to float64 round-off)."""
        self._check_compatible(other)
        self.n += other.n
        self.sum += other.sum.to(self.sum.device)
        self.outer += other.outer.to(self.outer.device)
        return self

    def all_reduce(self, accelerator: Any = None) -> FeatureStats:
        """Sum the state over processes (``accelerate.Accelerator`` or an initialised torch.distributed)."""
        if accelerator is not None:
            if accelerator.num_processes == 1:
                return self
            n = torch.tensor([float(self.n)], dtype=torch.float64, device=accelerator.device)
            self.sum = accelerator.reduce(self.sum.to(accelerator.device), reduction="sum")
            self.outer = accelerator.reduce(self.outer.to(accelerator.device), reduction="sum")
            self.n = int(accelerator.reduce(n, reduction="sum").item())
            return self
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            n = torch.tensor([float(self.n)], dtype=torch.float64, device=self.sum.device)
            for tensor in (n, self.sum, self.outer):
                torch.distributed.all_reduce(tensor)
            self.n = int(n.item())
        return self

    @property
    def mean(self) -> np.ndarray:
        self._require(1)
        return (self.sum / self.n).cpu().numpy()

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance (``ddof=1``, as ``np.cov(rowvar=False)`` in pytorch-fid)."""
        self._require(2)
        mu = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return ((cov + cov.T) / 2).cpu().numpy()

    @property
    def second_moment(self) -> np.ndarray:
        """``Σx xᵀ / n`` (for ``normalize=True`` the d x d dual of the cosine kernel ``K / n``)."""
        self._require(1)
        return (self.outer / self.n).cpu().numpy()

    def _require(self, n: int) -> None:
        if self.n < n:
            raise UserError(f"need at least {n} feature rows, got {self.n}")

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            "n": np.array(self.n),
            "dim": np.array(self.dim),
            "normalize": np.array(self.normalize),
            "sum": self.sum.cpu().numpy(),
            "outer": self.outer.cpu().numpy(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray]) -> FeatureStats:
        stats = cls(int(state["dim"]), normalize=bool(state["normalize"]))
        stats.n = int(state["n"])
        stats.sum = torch.as_tensor(np.asarray(state["sum"], dtype=np.float64))
        stats.outer = torch.as_tensor(np.asarray(state["outer"], dtype=np.float64))
        return stats

    def save(self, path: str | os.PathLike) -> Path:
        """Save as ``.npz`` (atomically) so shards can be merged later."""
        from hf_cxr_diffusion.io import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **self.state_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        with np.load(path) as data:
            return cls.from_state_dict(dict(data))
