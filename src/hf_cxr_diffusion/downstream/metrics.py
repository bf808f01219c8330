"""Test metrics of the classifier experiments, computed by scikit-learn from saved predictions.

Binary: accuracy, F1 / precision / recall of the positive class, ROC AUC of its probability.
Multi-class: accuracy, macro F1 / precision / recall, one-vs-rest macro AUC. Multi-label: subset
accuracy, macro F1 / precision / recall at 0.5, per-class AUC and their mean, one confusion matrix
per class. An AUC that is undefined (one class only in the truth) is ``None``.

Every accuracy comes with the test set's majority-class rate (what always answering its most common
class, or label combination, would score) and a 95% percentile bootstrap interval over test images
(Efron & Tibshirani 1993, 1,000 seeded resamples), so a small test set's noise is visible.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
)

from hf_cxr_diffusion.downstream.data import LabelSpace


def predictions_of(probs: np.ndarray, space: LabelSpace) -> np.ndarray:
    """Predicted classes (argmax) or multi-hot predictions (probability >= 0.5)."""
    return (probs >= 0.5).astype(int) if space.mode == "multilabel" else probs.argmax(axis=1)


def _auc(y: np.ndarray, score: np.ndarray, **kwargs: Any) -> float | None:
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, score, **kwargs))


BOOTSTRAP_SAMPLES = 1000


def _rows(targets: np.ndarray) -> np.ndarray:
    """One hashable code per test image: its class, or its whole multi-hot label row."""
    return targets if targets.ndim == 1 else np.unique(targets, axis=0, return_inverse=True)[1].reshape(-1)


def majority_rate(targets: np.ndarray) -> float:
    """Accuracy of always predicting the test set's most common class (or exact label combination)."""
    _, counts = np.unique(_rows(targets), return_counts=True)
    return float(counts.max() / counts.sum())


def bootstrap_accuracy_ci(targets: np.ndarray, pred: np.ndarray, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of the (subset) accuracy, resampling test images with replacement."""
    correct = (targets == pred) if targets.ndim == 1 else (targets == pred).all(axis=1)
    idx = np.random.default_rng(seed).integers(0, len(correct), size=(samples, len(correct)))
    means = correct[idx].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def classification_metrics(targets: np.ndarray, probs: np.ndarray, space: LabelSpace) -> dict[str, Any]:
    """All test metrics of one experiment as plain JSON-able values."""
    pred = predictions_of(probs, space)
    k = space.num_outputs
    if space.mode == "binary":
        avg: dict[str, Any] = {"average": "binary", "pos_label": 1, "zero_division": 0}
        auc = _auc(targets, probs[:, 1])
        matrices: Any = confusion_matrix(targets, pred, labels=list(range(k))).tolist()
        per_class_auc = None
    elif space.mode == "multiclass":
        avg = {"average": "macro", "labels": list(range(k)), "zero_division": 0}
        # two classes: scikit-learn's binary AUC of the second class's probability (its "ovr" wants 1-d scores then)
        auc = (_auc(targets, probs[:, 1]) if k == 2 else float(roc_auc_score(
            targets, probs, multi_class="ovr", average="macro", labels=list(range(k))))) \
            if len(np.unique(targets)) == k else None  # fmt: skip
        matrices = confusion_matrix(targets, pred, labels=list(range(k))).tolist()
        per_class_auc = None
    else:
        avg = {"average": "macro", "zero_division": 0}
        per_class_auc = {name: _auc(targets[:, j], probs[:, j]) for j, name in enumerate(space.class_names)}
        defined = [v for v in per_class_auc.values() if v is not None]
        auc = float(np.mean(defined)) if defined else None
        matrices = {name: m.tolist() for name, m in zip(space.class_names, multilabel_confusion_matrix(targets, pred))}
    return {
        "accuracy": float(accuracy_score(targets, pred)),
        "accuracy_ci95": bootstrap_accuracy_ci(targets, pred),
        "majority_rate": majority_rate(targets),
        "f1": float(f1_score(targets, pred, **avg)),
        "precision": float(precision_score(targets, pred, **avg)),
        "recall": float(recall_score(targets, pred, **avg)),
        "auc": auc,
        "per_class_auc": per_class_auc,
        "confusion_matrix": matrices,
        "n": int(len(targets)),
    }


def selection_metric(targets: np.ndarray, probs: np.ndarray, space: LabelSpace) -> float:
    """What picks the best epoch: accuracy (the study), or macro AUC in multi-label mode."""
    if space.mode != "multilabel":
        return float(accuracy_score(targets, predictions_of(probs, space)))
    aucs = [a for j in range(targets.shape[1]) if (a := _auc(targets[:, j], probs[:, j])) is not None]
    return float(np.mean(aucs)) if aucs else float(accuracy_score(targets, predictions_of(probs, space)))
