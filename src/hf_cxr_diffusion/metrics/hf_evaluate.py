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
  but for its texts and the shape of its result;
- this file and the metric code it uses are joined into each module folder's generated
  ``cxr_core.py`` (:mod:`.modules`), so a module never imports ``hf_cxr_diffusion``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch

from hf_cxr_diffusion.metrics.base import Batch, Context, Metric
from hf_cxr_diffusion.metrics.decode import to_grayscale
from hf_cxr_diffusion.metrics.features import XRVFeatureExtractor
from hf_cxr_diffusion.metrics.fid import FID
from hf_cxr_diffusion.metrics.memorisation import Memorisation
from hf_cxr_diffusion.metrics.protocols import get_protocol
from hf_cxr_diffusion.metrics.vendi import Vendi

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


def _build(name: str, context: Context, options: Mapping[str, Any]) -> Metric:
    if name == "xrv_fid":
        return FID(context)
    if name == "vendi":
        return Vendi(context, q=options.get("vendi_q", 1.0))
    return Memorisation(context, threshold=options.get("memorisation_threshold"), top_k=options.get("top_k", 8))


def compute_metric(
    name: str,
    predictions: Sequence[Any],
    references: Sequence[Any] | None,
    options: Mapping[str, Any] | None = None,
    *,
    held_out: Sequence[Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """The result of metric ``name`` (``xrv_fid``, ``vendi``, ``memorisation``) on a module's columns.

    Padding is dropped (``references=None``: the metric has no reference column; for memorisation
    the references are the training images and ``held_out`` the real images that calibrate the
    threshold). Precomputed feature vectors are used as they are, under ``kwargs["protocol"]``
    (default ``"precomputed-features"``); images go through the xrv DenseNet (``weights``,
    ``weights_path``, ``allow_random_weights``, ``device``, ``batch_size``, ``protocol``). The same
    accumulators as :func:`hf_cxr_diffusion.metrics.evaluate_images`, so the numbers are the library's.
    """
    options = dict(options or {})
    sets = {"synthetic": drop_padding(predictions)}
    if references is not None:
        sets["training" if name == "memorisation" else "real"] = drop_padding(references)
    if held_out is not None:
        sets["real"] = drop_padding(held_out)
    sets = {side: rows for side, rows in sets.items() if rows}
    if is_feature_column(sets["synthetic"]):
        protocol = str(kwargs.get("protocol", "precomputed-features"))
        arrays = {side: torch.as_tensor(np.asarray(rows, dtype=np.float32)) for side, rows in sets.items()}  # as stored
        context = Context(arrays["synthetic"].shape[1], protocol, "precomputed", {"protocol": protocol})
    else:
        protocol = kwargs.pop("protocol", None)
        model = XRVFeatureExtractor(kwargs.pop("weights", None), protocol=get_protocol(protocol), **kwargs)
        arrays = {side: torch.from_numpy(model.features(rows)) for side, rows in sets.items()}
        context = Context(model.feature_dim, model.protocol.id, model.name, model.provenance())
    metric = _build(name, context, options)
    try:
        for side, rows in arrays.items():
            metric.update(Batch(side, rows))
        return metric.compute()
    finally:
        metric.close()
