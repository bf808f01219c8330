"""Streaming, mergeable feature statistics in float64 (O(d²) memory for any number of rows).

Like a torchmetrics ``Metric`` state with ``dist_reduce_fx="sum"``: shards computed on different
processes or machines combine by adding (:meth:`merge`, :meth:`all_reduce`), and travel as
``.npz`` files (:meth:`save` / :meth:`load`).

Rows are copied (shifted or scaled) into one reused block of :data:`BLOCK` rows; a full block (or a
read of the state) adds its product to the sums with one BLAS ``syrk`` (half the flops of a ``gemm``),
so batches of any size cost as few, large BLAS calls as ``np.cov``. The ``syrk`` updates one triangle
only (float64: in place, no d x d temporary); the other is mirrored once, when the sums are read.

- :class:`FeatureStats` (FID): ``n``, ``Σ(x - c)`` and ``Σ(x - c)(x - c)ᵀ`` with the shift ``c`` the
  first batch's mean, so features whose mean is large next to their spread (mean/std 1e6) keep
  their covariance (the unshifted sums would cancel catastrophically). Every step in float64.
- :class:`GramStats` (Vendi): ``n`` and ``Σ x̂ x̂ᵀ`` of unit-norm rows (the d x d dual of the cosine
  kernel). By default each block's product runs in float32 and is accumulated in float64;
  ``exact=True`` keeps every step in float64.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import scipy.linalg.blas
import torch

from hf_cxr_diffusion.errors import UserError

#: rows per reused float64 block (FID): 8192 x 2048 x 8 B = 128 MiB at most; n = 5k rows are one BLAS call, like np.cov
BLOCK = 8192
#: rows per reused float32 block (Vendi): float32 round-off grows with the rows per product; at 4096 the Vendi
#: score stays within 5e-9 of float64 at n = 25,133 (8192: 7.4e-9, 16,384: 2.7e-8; bench/metrics.py features).
#: 8192 was 3% faster (0.373 vs 0.384 s, n = 25,133, best of 7) but put tests/metrics/test_vendi.py's
#: 6,000 x 256 ReLU-like features in one product: 1.8e-8 at q = 1 (4096: 3.5e-9, 2048: 2.5e-10)
BLOCK_FLOAT32 = 4096
#: rows per strip when a d x d triangle is mirrored (64 x 2048 x 8 B = 1 MiB); at d = 2048 a mirror took 7.4 ms with
#: 64 rows, 8.2 ms with 256, 7.8 ms in 64 x 64 tiles (best of 7, one thread)
STRIP = 64

S = TypeVar("S", bound="_SumStats")
NON_FINITE = "features contain NaN or inf; check the images and the feature extractor"


def _rows(features: Any, dim: int, *, check_finite: bool = True) -> np.ndarray:
    """A ``B x dim`` numpy view of ``features`` (torch tensors are moved to the CPU), checked finite unless told not to."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[1] != dim:
        raise UserError(f"features of shape {tuple(x.shape)}; expected B x {dim}")
    if x.dtype.kind not in "fiu":
        raise UserError(f"features of dtype {x.dtype}; expected numbers")
    if check_finite and not np.isfinite(x).all():
        raise UserError(NON_FINITE)
    return x


def check_protocols(a: Any, b: Any) -> None:
    """Refuse to combine or compare statistics computed under two different protocols (naming both)."""
    pa, pb = getattr(a, "protocol", None), getattr(b, "protocol", None)
    if pa and pb and pa != pb:
        raise UserError(
            f"statistics of protocol {pa!r} and of protocol {pb!r} cannot be combined or compared: their features "
            "differ; recompute one side under the other's protocol"
        )


def _mirror_upper(a: np.ndarray, step: int = STRIP) -> None:
    """Copy the upper triangle of the square ``a`` onto its lower one, in place, ``step`` rows at a time."""
    for lo in range(0, len(a), step):
        hi = lo + step
        a[hi:, lo:hi] = a[lo:hi, hi:].T
        diag = a[lo:hi, lo:hi]
        lower = np.tril_indices(len(diag), -1)
        diag[lower] = diag.T[lower]


class _SumStats:
    """Shared state handling: sums that add across shards, saved as ``.npz``; ``outer`` fed through a reused block."""

    _arrays: tuple[str, ...] = ()
    kind: str = ""

    def __init__(self, dim: int, *, protocol: str | None, block_dtype: type, block_rows: int) -> None:
        self.dim = int(dim)
        self.n = 0
        #: the protocol the features were computed under (checked when shards are combined or compared)
        self.protocol = protocol
        self._outer = np.zeros((self.dim, self.dim))  # without the rows still in the block
        self._outer_zero = True  # nothing added yet: the first block's product is written straight into it
        self._upper_only = False  # blocks were added to the upper triangle since it was mirrored
        self._block_dtype, self._block_rows = block_dtype, block_rows
        self._block: np.ndarray | None = None  # the reused block of rows
        self._product: np.ndarray | None = None  # reused d x d float32 product of a block (upper triangle)
        self._fill = 0

    def _buffer(self, count: int, write: Callable[[int, int, np.ndarray], None]) -> None:
        """Have ``write(lo, hi, rows)`` fill rows ``lo:hi`` of ``count`` into the block; full blocks go into ``outer``."""
        if self._block is None and count:
            # allocated once at full size: the OS maps its pages only as rows are written, and it is never copied
            self._block = np.empty((self._block_rows, self.dim), self._block_dtype)
        done = 0
        while done < count:
            m = min(count - done, self._block_rows - self._fill)
            write(done, done + m, self._block[self._fill : self._fill + m])
            self._fill += m
            done += m
            if self._fill == self._block_rows:
                self._flush()

    def _flush(self) -> None:
        """Add the block's ``Σ rows rowsᵀ`` to the upper triangle of ``outer`` (one BLAS ``syrk``).

        BLAS reads C-ordered matrices as their transposes: ``rows.T`` is the d x m Fortran matrix ``A`` whose
        ``A Aᵀ`` is wanted, and the lower triangle of ``outer.T`` that ``syrk`` writes is the upper one of ``outer``
        (lower: 399 vs 404 ms for the upper one, numpy's matmul 413 ms, 5,000 x 2048 float64, best of 5).
        """
        if not self._fill:
            return
        rows = self._block[: self._fill]
        if self._block_dtype is np.float64:
            beta = 0.0 if self._outer_zero else 1.0
            self._outer = scipy.linalg.blas.dsyrk(1.0, rows.T, beta=beta, c=self._outer.T, lower=True, overwrite_c=True).T
        else:
            if self._product is None:  # zeros: syrk never writes its lower triangle, so adding it adds nothing
                self._product = np.zeros((self.dim, self.dim), np.float32)
            self._outer += scipy.linalg.blas.ssyrk(1.0, rows.T, c=self._product.T, lower=True, overwrite_c=True).T
        self._outer_zero, self._upper_only = False, True
        self._fill = 0

    @property
    def outer(self) -> np.ndarray:
        """The full symmetric sum of row outer products (rows still in the block added first)."""
        self._flush()
        if self._upper_only:
            _mirror_upper(self._outer)
            self._upper_only = False
        return self._outer

    @outer.setter
    def outer(self, value: np.ndarray) -> None:
        self._flush()
        self._outer = np.ascontiguousarray(value, dtype=np.float64)
        self._outer_zero = self._upper_only = False

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
            value = np.array(state[key], dtype=np.float64)
            if key == "outer":  # files of earlier versions hold only the upper triangle of outer (a BLAS syrk result)
                _mirror_upper(value)
            setattr(stats, key, value)
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
        super().__init__(dim, protocol=protocol, block_dtype=np.float64, block_rows=BLOCK)
        self.shift = np.zeros(self.dim)
        self.sum = np.zeros(self.dim)

    def update(self, features: torch.Tensor | np.ndarray) -> FeatureStats:
        """Add a ``B x d`` batch of features."""
        x = _rows(features, self.dim)
        if len(x) == 0:
            return self
        if self.n == 0:
            self.shift = x.mean(axis=0, dtype=np.float64)

        def write(lo: int, hi: int, rows: np.ndarray) -> None:
            np.subtract(x[lo:hi], self.shift, out=rows)
            self.sum += rows.sum(axis=0)

        self._buffer(len(x), write)
        self.n += len(x)
        return self

    def _rebased(self, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This shard's sums about another ``shift`` (exact algebra: x - s = (x - c) + (c - s))."""
        delta = self.shift - shift
        total = self.sum + self.n * delta
        outer = self.outer + np.outer(self.sum, delta) + np.outer(delta, self.sum) + self.n * np.outer(delta, delta)
        return total, outer

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another shard's sums in place (rebased onto this shard's shift)."""
        self._check_compatible(other)
        if other.n == 0:
            return self
        if self.n == 0:
            self.shift, self.sum, self.outer, self.n = other.shift.copy(), other.sum.copy(), other.outer.copy(), other.n
            return self
        total, outer = other._rebased(self.shift)
        self.sum = self.sum + total
        self.outer = self.outer + outer
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
        self.shift, self.sum, self.outer, self.n = common, total, outer, int(round(float(n[0])))
        return self

    @property
    def mean(self) -> np.ndarray:
        self._require(1)
        return self.shift + self.sum / self.n

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance (``ddof=1``, as ``np.cov(rowvar=False)`` in pytorch-fid)."""
        self._require(2)
        self._flush()
        # (outer - n m mᵀ) / (n - 1) with m = sum / n, from the upper triangle of outer (the one syrk fills; outer is
        # left as it is), STRIP rows at a time, each strip also written to its mirror place: one pass over d x d.
        # 5,000 x 2048 streamed: update 22 ms, syrk 404 ms, this 19 ms = 447 ms; numpy's matmul (syrk + its own
        # mirror) and a 16-row finalisation of the full matrix took 23 + 427 + 9 = 460 ms (best of 7, 4 Dec 2026)
        c, scale = self.sum * (1.0 / np.sqrt(self.n * (self.n - 1.0))), 1.0 / (self.n - 1)
        cov, rows, part = np.empty((self.dim, self.dim)), np.empty((STRIP, self.dim)), np.empty((STRIP, self.dim))
        for lo in range(0, self.dim, STRIP):
            hi = min(lo + STRIP, self.dim)
            strip = np.multiply(self._outer[lo:hi, lo:], scale, out=rows[: hi - lo, : self.dim - lo])
            strip -= np.multiply.outer(c[lo:hi], c[lo:], out=part[: hi - lo, : self.dim - lo])
            cov[lo:hi, lo:] = strip
            cov[hi:, lo:hi] = strip[:, hi - lo :].T
            _mirror_upper(cov[lo:hi, lo:hi])
        return cov


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
        super().__init__(dim, protocol=protocol, block_dtype=np.float64 if exact else np.float32,
                         block_rows=BLOCK if exact else BLOCK_FLOAT32)
        self.exact = bool(exact)

    def update(self, features: torch.Tensor | np.ndarray) -> GramStats:
        """Add a ``B x d`` batch: rows scaled to unit norm into the block (in float32 unless ``exact``)."""
        x = _rows(features, self.dim, check_finite=False)
        squares = np.einsum("ij,ij->i", x, x, dtype=np.float64 if self.exact else None)
        if not np.isfinite(squares).all():  # a NaN or inf in the row, or (float32) a square above 3e38
            if not np.isfinite(x).all():
                raise UserError(NON_FINITE)
            squares = np.einsum("ij,ij->i", x, x, dtype=np.float64)
        norms = np.sqrt(squares, dtype=np.float64)
        scale = (1.0 / np.maximum(norms, np.finfo(np.float64).tiny)).astype(self._block_dtype)

        def write(lo: int, hi: int, rows: np.ndarray) -> None:
            np.multiply(x[lo:hi], scale[lo:hi, None], out=rows)

        self._buffer(len(x), write)
        self.n += len(x)
        return self

    def merge(self, other: GramStats) -> GramStats:
        self._check_compatible(other)
        self.outer = self.outer + other.outer
        self.n += other.n
        return self

    def all_reduce(self, accelerator: Any = None) -> GramStats:
        n, outer = _reduce_sum([np.array([float(self.n)]), self.outer], accelerator)
        self.n, self.outer = int(round(float(n[0]))), outer
        return self

    @property
    def second_moment(self) -> np.ndarray:
        """``Σ x̂ x̂ᵀ / n``: its non-zero eigenvalues are those of the cosine kernel ``K / n``."""
        self._require(1)
        return self.outer / self.n
