"""Streaming, mergeable feature statistics in float64 (O(d²) memory for any number of rows).

Like a torchmetrics ``Metric`` state with ``dist_reduce_fx="sum"``: shards computed on different
processes or machines combine by adding (:meth:`merge`, :meth:`all_reduce`), and travel as
``.npz`` files (:meth:`save` / :meth:`load`).

- :class:`FeatureStats` (FID): ``n``, ``Σ(x - c)`` and ``Σ(x - c)(x - c)ᵀ`` with the shift ``c`` the
  first batch's mean, so features whose mean is large next to their spread (mean/std 1e6) keep
  their covariance (the unshifted sums would cancel catastrophically). The outer product is one
  BLAS ``dsyrk`` per block (half the flops of ``np.cov``'s ``gemm``).
- :class:`GramStats` (Vendi): ``n`` and ``Σ x̂ x̂ᵀ`` of unit-norm rows (the d x d dual of the cosine
  kernel). By default each block's product runs in float32 (``ssyrk``) and is accumulated in
  float64; ``exact=True`` keeps every step in float64.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import scipy.linalg.blas as blas
import torch

from hf_cxr_diffusion.errors import UserError

#: rows per BLAS block: bounds the float64 copy of a batch (4096 x 2048 x 8 B = 64 MiB)
BLOCK = 4096

S = TypeVar("S", bound="_SumStats")


def _rows(features: Any, dim: int) -> np.ndarray:
    """A ``B x dim`` numpy view of ``features`` (torch tensors are moved to the CPU), checked finite."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[1] != dim:
        raise UserError(f"features of shape {tuple(x.shape)}; expected B x {dim}")
    if x.dtype.kind not in "fiu":
        raise UserError(f"features of dtype {x.dtype}; expected numbers")
    if not np.isfinite(x).all():
        raise UserError("features contain NaN or inf; check the images and the feature extractor")
    return x


def check_protocols(a: Any, b: Any) -> None:
    """Refuse to combine or compare statistics computed under two different protocols (naming both)."""
    pa, pb = getattr(a, "protocol", None), getattr(b, "protocol", None)
    if pa and pb and pa != pb:
        raise UserError(
            f"statistics of protocol {pa!r} and of protocol {pb!r} cannot be combined or compared: their features "
            "differ; recompute one side under the other's protocol"
        )


def _symmetric(upper: np.ndarray) -> np.ndarray:
    """The full matrix from a BLAS ``syrk`` result whose upper triangle is valid."""
    full = np.triu(upper)
    return full + np.triu(full, 1).T


class _SumStats:
    """Shared state handling: sums that add across shards, saved as ``.npz``."""

    _arrays: tuple[str, ...] = ()
    kind: str = ""

    def __init__(self, dim: int, *, protocol: str | None = None) -> None:
        self.dim = int(dim)
        self.n = 0
        #: the protocol the features were computed under (checked when shards are combined or compared)
        self.protocol = protocol

    def _check_compatible(self, other: _SumStats) -> None:
        if type(other) is not type(self) or other.dim != self.dim:
            raise UserError(
                f"cannot merge {type(other).__name__}(dim={other.dim}) into {type(self).__name__}(dim={self.dim})"
            )
        check_protocols(self, other)

    def _require(self, n: int) -> None:
        if self.n < n:
            raise UserError(f"need at least {n} feature rows, got {self.n}")

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"kind": np.array(self.kind), "n": np.array(self.n), "dim": np.array(self.dim),
                "protocol": np.array(self.protocol or ""), **{k: getattr(self, k) for k in self._arrays}}

    @classmethod
    def from_state_dict(cls: type[S], state: dict[str, np.ndarray]) -> S:
        if str(state.get("kind", cls.kind)) != cls.kind:
            raise UserError(f"statistics of kind {state['kind']!s} cannot be read as {cls.__name__}")
        stats = cls(int(state["dim"]))
        stats.protocol = str(state.get("protocol", "")) or None
        stats.n = int(state["n"])
        for key in cls._arrays:
            setattr(stats, key, np.asfortranarray(np.asarray(state[key], dtype=np.float64)))
        return stats

    def save(self, path: str | os.PathLike) -> Path:
        """Save as ``.npz`` (atomically) so shards can be merged later."""
        from hf_cxr_diffusion.io import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **self.state_dict())
        return Path(path)

    @classmethod
    def load(cls: type[S], path: str | os.PathLike) -> S:
        with np.load(path, allow_pickle=False) as data:
            return cls.from_state_dict(dict(data))


def _reduce_sum(values: list[np.ndarray], accelerator: Any) -> list[np.ndarray]:
    """Sum float64 arrays over processes (accelerate, or an initialised torch.distributed); no-op alone."""
    if accelerator is not None:
        if accelerator.num_processes == 1:
            return values
        return [accelerator.reduce(torch.from_numpy(np.ascontiguousarray(v)).to(accelerator.device), reduction="sum")
                .cpu().numpy() for v in values]
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    backend = torch.distributed.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    out = []
    for v in values:
        t = torch.from_numpy(np.ascontiguousarray(v)).to(device)
        torch.distributed.all_reduce(t)
        out.append(t.cpu().numpy())
    return out


class FeatureStats(_SumStats):
    """Running ``n``, ``Σ(x - c)`` and ``Σ(x - c)(x - c)ᵀ`` in float64, ``c`` the first batch's mean."""

    _arrays = ("shift", "sum", "outer")
    kind = "feature-stats-v2"

    def __init__(self, dim: int, *, protocol: str | None = None) -> None:
        super().__init__(dim, protocol=protocol)
        self.shift = np.zeros(self.dim)
        self.sum = np.zeros(self.dim)
        self.outer = np.zeros((self.dim, self.dim), order="F")  # upper triangle valid

    def update(self, features: torch.Tensor | np.ndarray) -> FeatureStats:
        """Add a ``B x d`` batch of features."""
        x = _rows(features, self.dim)
        if len(x) == 0:
            return self
        if self.n == 0:
            self.shift = x.mean(axis=0, dtype=np.float64)
        for start in range(0, len(x), BLOCK):
            block = x[start : start + BLOCK].astype(np.float64) - self.shift
            self.sum += block.sum(axis=0)
            self.outer = blas.dsyrk(1.0, block.T, beta=1.0, c=self.outer, trans=0, overwrite_c=1)
        self.n += len(x)
        return self

    def _rebased(self, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This shard's sums about another ``shift`` (exact algebra: x - s = (x - c) + (c - s))."""
        delta = self.shift - shift
        total = self.sum + self.n * delta
        outer = _symmetric(self.outer) + np.outer(self.sum, delta) + np.outer(delta, self.sum) + self.n * np.outer(delta, delta)
        return total, outer

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another shard's sums in place (rebased onto this shard's shift)."""
        self._check_compatible(other)
        if other.n == 0:
            return self
        if self.n == 0:
            self.shift, self.sum, self.outer, self.n = other.shift.copy(), other.sum.copy(), other.outer.copy(order="F"), other.n
            return self
        total, outer = other._rebased(self.shift)
        self.sum = self.sum + total
        self.outer = np.asfortranarray(_symmetric(self.outer) + outer)
        self.n += other.n
        return self

    def all_reduce(self, accelerator: Any = None) -> FeatureStats:
        """Sum the state over processes: rebase every shard onto the count-weighted mean shift, then add."""
        n, weighted = _reduce_sum([np.array([float(self.n)]), self.shift * self.n], accelerator)
        if float(n[0]) == 0:
            return self
        common = weighted / float(n[0])
        total, outer = self._rebased(common) if self.n else (np.zeros(self.dim), np.zeros((self.dim, self.dim)))
        total, outer = _reduce_sum([total, outer], accelerator)
        self.shift, self.sum, self.outer, self.n = common, total, np.asfortranarray(outer), int(round(float(n[0])))
        return self

    @property
    def mean(self) -> np.ndarray:
        self._require(1)
        return self.shift + self.sum / self.n

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance (``ddof=1``, as ``np.cov(rowvar=False)`` in pytorch-fid)."""
        self._require(2)
        centred = self.sum / self.n
        return (_symmetric(self.outer) - self.n * np.outer(centred, centred)) / (self.n - 1)


class GramStats(_SumStats):
    """Running ``n`` and ``Σ x̂ x̂ᵀ`` of unit-norm rows: ``second_moment`` is the dual of the cosine kernel ``K / n``.

    Args:
        dim: feature dimension.
        exact: compute each block's product in float64 instead of float32 (for tests and audits).
        protocol: the protocol of the features.
    """

    _arrays = ("outer",)
    kind = "gram-stats-v1"

    def __init__(self, dim: int, *, exact: bool = False, protocol: str | None = None) -> None:
        super().__init__(dim, protocol=protocol)
        self.exact = bool(exact)
        self.outer = np.zeros((self.dim, self.dim), order="F")  # upper triangle valid

    def update(self, features: torch.Tensor | np.ndarray) -> GramStats:
        """Add a ``B x d`` batch (row norms in float64; the block's product in float32 unless ``exact``)."""
        x = _rows(features, self.dim)
        dtype = np.float64 if self.exact else np.float32
        for start in range(0, len(x), BLOCK):
            block = x[start : start + BLOCK]
            norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64 if self.exact else None), dtype=np.float64)
            scale = (1.0 / np.maximum(norms, np.finfo(np.float64).tiny)).astype(dtype)
            unit = block.astype(dtype, copy=False) * scale[:, None]
            if self.exact:
                self.outer = blas.dsyrk(1.0, unit.T, beta=1.0, c=self.outer, trans=0, overwrite_c=1)
            else:
                self.outer += blas.ssyrk(1.0, unit.T, trans=0)  # float32 product of the block, float64 sum
        self.n += len(x)
        return self

    def merge(self, other: GramStats) -> GramStats:
        self._check_compatible(other)
        self.outer = np.asfortranarray(_symmetric(self.outer) + _symmetric(other.outer))
        self.n += other.n
        return self

    def all_reduce(self, accelerator: Any = None) -> GramStats:
        n, outer = _reduce_sum([np.array([float(self.n)]), _symmetric(self.outer)], accelerator)
        self.n, self.outer = int(round(float(n[0]))), np.asfortranarray(outer)
        return self

    @property
    def second_moment(self) -> np.ndarray:
        """``Σ x̂ x̂ᵀ / n``: its non-zero eigenvalues are those of the cosine kernel ``K / n``."""
        self._require(1)
        return _symmetric(self.outer) / self.n
