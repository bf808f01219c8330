"""Shared plumbing for the ``evaluate`` modules in ``metrics/<name>/`` (kept out of the module scripts).

- inputs are images (PIL, numpy 8/16-bit H x W or H x W x C, torch CHW, file paths) or
  precomputed feature vectors; we pick the feature set ourselves instead of evaluate's
  trial encoding (a PIL image "encodes" as a float sequence and only fails when written);
- predictions and references may differ in number (FID): the shorter column is padded with
  None before it reaches evaluate's equal-length Arrow writer, and the padding is dropped again
  in ``_compute``;
- arrays Pillow cannot hold (16-bit or float colour) become 2-D grayscale first, exactly as step 1
  of the protocol would;
- :func:`metric_info` and :func:`compute_metric` are the whole ``_info`` / ``_compute`` of a module
  but for its texts and the shape of its result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch

from hf_cxr_diffusion.metrics.features import to_grayscale

if TYPE_CHECKING:
    import evaluate


def feature_sets(columns: Sequence[str]) -> list[datasets.Features]:
    """Declared input formats: float vectors first (evaluate's quirk), then images."""
    return [
        datasets.Features({c: datasets.Sequence(datasets.Value("float32")) for c in columns}),
        datasets.Features({c: datasets.Image() for c in columns}),
    ]


def is_feature_vector(item: Any) -> bool:
    if isinstance(item, (list, tuple)):
        return len(item) > 0 and all(isinstance(v, (int, float, np.number)) for v in item[:8])
    return isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 1


def _storable(item: Any) -> Any:
    """Make an array input storable by ``datasets.Image`` without changing its protocol features."""
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
        item = np.moveaxis(item, 0, -1) if item.ndim == 3 else item
    if not isinstance(item, np.ndarray) or item.ndim != 3:
        return item
    if item.shape[-1] in (3, 4) and (item[..., :3] == item[..., :1]).all():
        return np.ascontiguousarray(item[..., 0])  # grayscale stored as colour: exact
    if item.dtype == np.uint8 or item.shape[-1] == 1:
        return item if item.shape[-1] != 1 else np.ascontiguousarray(item[..., 0])
    gray, maxval = to_grayscale(item)
    return (gray / maxval).astype(np.float32)


class ImageInputsMixin:
    """Mix into an ``evaluate.Metric`` whose inputs are images or feature vectors (not a Metric itself)."""

    def _infer_feature_from_batch(self, batch: dict[str, list]) -> datasets.Features:
        first = next((v for col in batch.values() for v in col if v is not None), None)
        return self.features[0] if is_feature_vector(first) else self.features[1]

    def add_batch(self, *, predictions=None, references=None, **kwargs):  # noqa: ANN001, ANN201
        """Add a batch of images or feature vectors; columns of different lengths are allowed."""
        columns = {"predictions": predictions, "references": references, **kwargs}
        columns = {k: [_storable(v) for v in (columns[k] if columns[k] is not None else [])] for k in self._feature_names()}
        longest = max(len(v) for v in columns.values())
        columns = {k: v + [None] * (longest - len(v)) for k, v in columns.items()}
        if longest == 0:
            return None
        return super().add_batch(**columns)


def drop_padding(column: Sequence[Any] | None) -> list[Any]:
    return [v for v in (column or []) if v is not None]


def is_feature_column(column: Sequence[Any]) -> bool:
    return bool(column) and is_feature_vector(column[0])


def metric_info(
    description: str, citation: str, inputs_description: str, columns: Sequence[str], reference_urls: Sequence[str]
) -> evaluate.MetricInfo:
    """A module's ``MetricInfo``: its texts, and :func:`feature_sets` of its input ``columns``."""
    import evaluate

    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=inputs_description,
        features=feature_sets(columns),
        reference_urls=list(reference_urls),
    )


def compute_metric(
    name: str,
    predictions: Sequence[Any],
    references: Sequence[Any] | None,
    options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """The ``name`` entry of :func:`~hf_cxr_diffusion.metrics.evaluate_images` on a module's columns.

    Padding is dropped (``references=None``: the metric has no reference column). Precomputed feature
    vectors go to :func:`~hf_cxr_diffusion.metrics.evaluate_features` (memorisation straight to
    :func:`~hf_cxr_diffusion.metrics.memorisation`) with the metric's ``options`` and ``kwargs["protocol"]``
    (default ``"precomputed-features"``); images go to ``evaluate_images`` with ``options`` and all ``kwargs``.
    """
    from hf_cxr_diffusion.metrics import evaluate_features, evaluate_images, memorisation

    options = dict(options or {})
    predictions = drop_padding(predictions)
    references = None if references is None else drop_padding(references)
    if not is_feature_column(predictions):
        return evaluate_images(references, predictions, (name,), **options, **kwargs)[name]
    protocol = kwargs.get("protocol", "precomputed-features")
    if name == "memorisation":
        report = memorisation(
            np.asarray(references), np.asarray(predictions), threshold=options["memorisation_threshold"], top_k=options["top_k"]
        )
        return {**report, "protocol": protocol}
    return evaluate_features(references, predictions, (name,), protocol=protocol, **options)[name]
