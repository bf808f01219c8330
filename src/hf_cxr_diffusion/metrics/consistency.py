"""Class consistency: does a pathology classifier find the finding the prompt asked for?

The prompt-alignment metric of "Pixels Under Pressure" (fine-tuning paradigms for CXR synthesis,
Sec. 2.2): the proportion of images generated for a condition that a pretrained CXR classifier
assigns to that condition, per condition. Here the classifier is the xrv DenseNet-121 head (the
same network as the features); a finding counts as predicted when its probability, after xrv's
operating-point normalisation, is >= 0.5. "No Finding" is consistent when no supported
pathology is predicted. Labels the classifier cannot predict are counted as unsupported, never
dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

NO_FINDING = "No Finding"
#: corpus label spellings that differ from xrv's pathology names (after normalisation)
ALIASES = {"pleural effusion": "effusion"}


def _norm(name: str) -> str:
    key = re.sub(r"[\s_\-]+", " ", name.strip().lower())
    return ALIASES.get(key, key)


def xrv_index(label: str, pathologies: Sequence[str]) -> int | None:
    """Index of ``label`` among the classifier's pathologies (spelling-insensitive), or None."""
    names = {_norm(p): i for i, p in enumerate(pathologies) if p}
    return names.get(_norm(label))


class ConsistencyCounter:
    """Streaming per-condition counts of consistent predictions."""

    def __init__(self, pathologies: Sequence[str], threshold: float = 0.5) -> None:
        self.pathologies = list(pathologies)
        self.threshold = float(threshold)
        self.total: dict[str, int] = {}
        self.correct: dict[str, int] = {}
        self.unsupported: dict[str, int] = {}

    def update(self, probabilities: np.ndarray, labels: Sequence[Sequence[str]]) -> None:
        """Add a batch: ``B x P`` probabilities and the prompted label names of each image."""
        predicted = np.asarray(probabilities) >= self.threshold
        for row, names in zip(predicted, labels):
            for name in names or [NO_FINDING]:
                if _norm(name) == _norm(NO_FINDING):
                    hit = not row.any()
                else:
                    idx = xrv_index(name, self.pathologies)
                    if idx is None:
                        self.unsupported[name] = self.unsupported.get(name, 0) + 1
                        continue
                    hit = bool(row[idx])
                self.total[name] = self.total.get(name, 0) + 1
                self.correct[name] = self.correct.get(name, 0) + int(hit)

    def result(self) -> dict[str, Any]:
        per = {
            name: {"rate": self.correct[name] / n, "correct": self.correct[name], "n": n}
            for name, n in sorted(self.total.items())
        }
        n_all = sum(self.total.values())
        return {
            "per_condition": per,
            "mean_rate": float(np.mean([v["rate"] for v in per.values()])) if per else None,
            "n": n_all,
            "threshold": self.threshold,
            "unsupported_labels": dict(sorted(self.unsupported.items())),
        }
