"""Per-condition state: one mergeable statistic per finding, and a bounded uniform sample per finding.

An image belongs to every finding in its label list; an empty list means "No Finding".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.metrics.base import NO_FINDING


def members(labels: Sequence[Sequence[str]] | None, n: int) -> dict[str, list[int]]:
    """Row indices of each condition in a batch of ``n`` rows."""
    if labels is None:
        raise UserError("per-condition metrics need a label list for every image")
    if len(labels) != n:
        raise UserError(f"{len(labels)} label rows for a batch of {n} images")
    out: dict[str, list[int]] = {}
    for i, names in enumerate(labels):
        for name in names or [NO_FINDING]:
            out.setdefault(name, []).append(i)
    return out


def _gather_keys(keys: list[str], accelerator: Any) -> list[str]:
    """The union of every process's keys (sorted), so all processes reduce the same states in the same order."""
    if accelerator is not None:
        if accelerator.num_processes == 1:
            return keys
        from accelerate.utils import gather_object

        return sorted(set().union(*gather_object([keys])))
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return keys
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, keys)
    return sorted(set().union(*gathered))


class KeyedStats:
    """A dict ``condition -> statistic`` that merges and all-reduces key by key."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self.items: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        if key not in self.items:
            self.items[key] = self.factory()
        return self.items[key]

    def update_by_label(self, features: torch.Tensor | np.ndarray, labels: Sequence[Sequence[str]] | None) -> None:
        rows = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
        for name, idx in members(labels, len(rows)).items():
            self.get(name).update(rows[idx])

    def merge(self, other: KeyedStats) -> KeyedStats:
        for key, value in other.items.items():
            self.get(key).merge(value)
        return self

    def all_reduce(self, accelerator: Any = None) -> KeyedStats:
        for key in _gather_keys(sorted(self.items), accelerator):
            self.get(key).all_reduce(accelerator)
        return self


class Reservoir:
    """Uniform sample of at most ``cap`` rows from a stream (Vitter's algorithm R), seeded."""

    def __init__(self, cap: int, seed: int) -> None:
        self.cap, self.rng, self.seen, self.rows = int(cap), np.random.default_rng(seed), 0, []

    def update(self, rows: np.ndarray) -> None:
        for row in np.asarray(rows, dtype=np.float32):
            self.seen += 1
            if len(self.rows) < self.cap:
                self.rows.append(row)
            elif (j := int(self.rng.integers(self.seen))) < self.cap:
                self.rows[j] = row

    def sample(self, m: int) -> np.ndarray:
        rows = np.stack(self.rows)
        return rows[self.rng.permutation(len(rows))[:m]]

    def merge(self, other: Reservoir) -> Reservoir:
        """Pool two shards' samples (uniform over the pooled stream only while both are below ``cap``)."""
        for row in other.rows:
            self.update(row[None])
        return self

    def all_reduce(self, accelerator: Any = None) -> Reservoir:
        if accelerator is not None or (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise UserError("per-condition Vendi samples are not reduced across processes; evaluate by-condition Vendi on one process")
        return self
