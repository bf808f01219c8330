"""Class consistency: does a pathology classifier find the finding the prompt asked for?

The prompt-alignment metric of "Pixels Under Pressure" (fine-tuning paradigms for CXR synthesis,
Sec. 2.2): the proportion of images generated for a condition that a pretrained CXR classifier
assigns to that condition, per condition. The paper's classifier is an EfficientNet trained on
CheXpert; here the classifier is pluggable: the feature model's own heads by default (the xrv
DenseNet's, with xrv's operating-point normalisation; or the phantom network's), or any torch
classifier with a label list (:class:`TorchClassifier`). A finding counts as predicted when its
probability is >= ``threshold`` (0.5, after the classifier's operating-point normalisation). "No
Finding" is consistent when the classifier's own "No Finding" head is predicted (the phantom network,
CheXpert-style classifiers) or, for classifiers without one (xrv), when none of its heads is;
label-list entries that are empty are not heads. Labels the classifier cannot
predict are counted as unsupported, never dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.metrics.base import NO_FINDING, Batch, Context, Metric
from hf_cxr_diffusion.metrics.conditions import _gather_keys
from hf_cxr_diffusion.metrics.stats import _reduce_sum

#: corpus label spellings that differ from xrv's pathology names (after normalisation)
ALIASES = {"pleural effusion": "effusion"}


def _norm(name: str) -> str:
    key = re.sub(r"[\s_\-]+", " ", name.strip().lower())
    return ALIASES.get(key, key)


def xrv_index(label: str, pathologies: Sequence[str]) -> int | None:
    """Index of ``label`` among the classifier's labels (spelling-insensitive), or None."""
    names = {_norm(p): i for i, p in enumerate(pathologies) if p}
    return names.get(_norm(label))


def _check_labels(labels: Any, what: str) -> list[str]:
    if labels is None or isinstance(labels, str) or not all(isinstance(x, str) and x for x in labels) or not labels:
        raise UserError(f"{what} needs a label list: a non-empty sequence of label names, one per output column")
    return list(labels)


class HeadsClassifier:
    """The feature model's own classifier heads, applied to the batch's features."""

    def __init__(self, feature_model: Any) -> None:
        self.feature_model = feature_model
        self.labels = _check_labels(feature_model.labels, f"the {feature_model.name} feature model's classifier")
        self.name = f"{feature_model.name} heads ({feature_model.weights})"

    def probabilities(self, batch: Batch) -> np.ndarray:
        return self.feature_model.probabilities(batch.features).cpu().numpy()


class TorchClassifier:
    """Any torch classifier with a label list: ``sigmoid(module(pixels))``, one column per label.

    ``pixels`` are the feature model's preprocessed inputs (``B x 1 x S x S`` under its protocol),
    so the module must accept them (e.g. the phantom feature network under ``phantom-fid-v1``).
    """

    def __init__(self, module: torch.nn.Module, labels: Sequence[str], *, name: str | None = None) -> None:
        self.labels = _check_labels(getattr(module, "labels", None) if labels is None else labels, "a classifier")
        self.module = module.eval()
        self.name = name or type(module).__name__

    @torch.inference_mode()
    def probabilities(self, batch: Batch) -> np.ndarray:
        if batch.pixels is None:
            raise UserError("this classifier needs the images, but the batch carries features only")
        param = next(self.module.parameters(), None)
        x = batch.pixels.to(param.device if param is not None else "cpu").float()
        out = torch.sigmoid(self.module(x)).cpu().numpy()
        if out.ndim != 2 or out.shape[1] != len(self.labels):
            raise UserError(f"classifier {self.name} gave outputs of shape {out.shape} for {len(self.labels)} labels")
        return out


class ClassConsistency(Metric):
    """Per prompted condition, the rate at which the classifier predicts it (needs synthetic labels)."""

    name = "class_consistency"
    higher_is_better: ClassVar[bool] = True
    needs_labels = True

    def __init__(self, context: Context, *, classifier: Any = None, threshold: float = 0.5) -> None:
        super().__init__(context)
        self.classifier = classifier if classifier is not None else context.classifier
        if self.classifier is None:
            raise UserError("class_consistency needs a classifier")
        _check_labels(getattr(self.classifier, "labels", None), f"classifier {getattr(self.classifier, 'name', '?')}")
        self.threshold = float(threshold)
        self.total: dict[str, int] = {}
        self.correct: dict[str, int] = {}
        self.unsupported: dict[str, int] = {}

    def update(self, batch: Batch) -> None:
        if batch.labels is None:
            raise UserError("class_consistency needs the label each synthetic image was prompted with")
        self.update_probabilities(self.classifier.probabilities(batch), batch.labels)

    def update_probabilities(self, probabilities: np.ndarray, labels: Sequence[Sequence[str]]) -> None:
        """Add ``B x L`` probabilities (columns = the classifier's labels) and the prompted label names of each image."""
        predicted = np.asarray(probabilities) >= self.threshold
        heads = self.classifier.labels
        no_finding_head = xrv_index(NO_FINDING, heads)
        for row, names in zip(predicted, labels):
            for name in names or [NO_FINDING]:
                if _norm(name) == _norm(NO_FINDING):  # its own head if the classifier has one, else no head predicted
                    hit = bool(row[no_finding_head]) if no_finding_head is not None else not row.any()
                else:
                    idx = xrv_index(name, heads)
                    if idx is None:
                        self.unsupported[name] = self.unsupported.get(name, 0) + 1
                        continue
                    hit = bool(row[idx])
                self.total[name] = self.total.get(name, 0) + 1
                self.correct[name] = self.correct.get(name, 0) + int(hit)

    def _states(self) -> list[Any]:
        return []

    def merge(self, other: Metric) -> Metric:
        super().merge(other)
        for mine, theirs in ((self.total, other.total), (self.correct, other.correct), (self.unsupported, other.unsupported)):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value
        return self

    def all_reduce(self, accelerator: Any = None) -> Metric:
        for counts in (self.total, self.correct, self.unsupported):
            keys = _gather_keys(sorted(counts), accelerator)
            summed = _reduce_sum([np.array([float(counts.get(k, 0)) for k in keys])], accelerator)[0] if keys else []
            counts.clear()
            counts.update({k: int(round(v)) for k, v in zip(keys, summed) if v})
        return self

    def compute(self) -> dict[str, Any]:
        per = {
            name: {"rate": self.correct[name] / n, "correct": self.correct[name], "n": n}
            for name, n in sorted(self.total.items())
        }
        return {
            "per_condition": per,
            "score": float(np.mean([v["rate"] for v in per.values()])) if per else None,
            "n": sum(self.total.values()),
            "threshold": self.threshold,
            "classifier": getattr(self.classifier, "name", type(self.classifier).__name__),
            "classifier_labels": list(self.classifier.labels),
            "unsupported_labels": dict(sorted(self.unsupported.items())),
            **self.carried(),
        }

