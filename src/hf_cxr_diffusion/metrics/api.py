"""One streaming pass over real, synthetic and training images -> every requested metric.

:func:`evaluate_images` is the API the trainer (validation FID/Vendi), the CLI, the demo and the
``evaluate`` modules share. Images are read once, in order, batch by batch, through one feature
model; each batch goes to every accumulator that reads that image set (see :mod:`.base`), and
each accumulator's ``compute()`` is its report entry. Pass metrics (Inception-FID, CLIP score)
run their own networks (CLIP first, so a missing model fails before the long pass).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.metrics.base import Batch, Context, Metric
from hf_cxr_diffusion.metrics.catalog import FEATURE_METRICS, FID_ALIASES, PASS_METRICS, metric_class, parse_metrics
from hf_cxr_diffusion.metrics.conditions import members
from hf_cxr_diffusion.metrics.protocols import Protocol

logger = logging.getLogger(__name__)

Labels = Sequence[Sequence[str | int]] | None


@dataclass
class EvalOptions:
    """Options of one evaluation.

    Args:
        feature_model: ``xrv`` (TorchXRayVision DenseNet-121) or ``phantom`` (the phantom feature network).
        protocol: a protocol id or :class:`Protocol` (default: the feature model's own, ``xrv-fid-v2``).
        weights: xrv DenseNet weights name (default ``densenet121-res224-all``).
        weights_path: the weights file or folder (xrv), or the phantom network's folder.
        allow_random_weights: use a seeded random network when weights are missing (results flagged).
        device, batch_size: where and how many images per forward pass.
        by_condition: also report FID / Vendi per condition (needs labels).
        vendi_q: Vendi order (> 0; ``inf`` = 1 / max eigenvalue).
        vendi_n_per_condition: fixed n per condition for Vendi (default: the smallest condition's count).
        memorisation_threshold: a fixed near-duplicate cosine threshold; ``None`` calibrates it on the real images.
        memorisation_percentile: the calibration percentile of held-out-real nearest-neighbour similarity.
        memorisation_space: look for copies in the feature model's ``features`` or in downsampled ``pixels``.
        top_k: closest memorisation pairs listed.
        seed: seed of the per-condition Vendi samples.
        classifier: class-consistency classifier (default: the feature model's heads).
        inception_dims: Inception-FID feature dims.
        clip_model: CLIP model folder or cached hub id for ``clip_score``.
        sources: where each image set (``"synthetic"``, ``"real"``, ``"training"``) was read from, named in errors.
    """

    feature_model: str = "xrv"
    protocol: str | Protocol | None = None
    weights: str | None = None
    weights_path: Any = None
    allow_random_weights: bool = False
    device: Any = None
    batch_size: int = 32
    by_condition: bool = False
    vendi_q: float = 1.0
    vendi_n_per_condition: int | None = None
    memorisation_threshold: float | None = None
    memorisation_percentile: float = 99.0
    memorisation_space: str = "features"
    top_k: int = 8
    seed: int = 0
    classifier: Any = None
    inception_dims: Sequence[int] = (2048,)
    clip_model: Any = None
    sources: dict[str, str] | None = None

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> EvalOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise UserError(f"unknown evaluation options {unknown}; valid: {', '.join(sorted(known))}")
        return cls(**kwargs)


def to_label_names(labels: Labels, names: Sequence[str] | None, n: int | None, side: str) -> list[list[str]] | None:
    """Per-image lists of label names (ids mapped through ``names``), checked against the image count."""
    if labels is None:
        return None
    out = []
    for i, row in enumerate(labels):
        row_names = []
        for lab in row:
            if isinstance(lab, (int, np.integer)):
                if names is None or not 0 <= lab < len(names):
                    raise UserError(f"{side} image {i}: label id {lab} needs label_names covering it")
                row_names.append(names[lab])
            else:
                row_names.append(str(lab))
        out.append(row_names)
    if n is not None and len(out) != n:
        raise UserError(f"{len(out)} {side} label rows for {n} {side} images; pass one label list per image")
    return out


def _check_finite(feats: Any, offset: int, side: str, source: str | None) -> None:
    """Refuse NaN/inf features, naming the image set, its folder and the first bad images."""
    import torch

    finite = torch.isfinite(torch.as_tensor(feats)).reshape(len(feats), -1).all(dim=1)
    if not bool(finite.all()):
        bad = [offset + int(i) for i in torch.nonzero(~finite).flatten()[:5]]
        where = f" of {source}" if source else ""
        raise UserError(f"{side} images{where}: the feature model gives NaN/inf features for image(s) {bad} (row order); "
                        "check those images (blank, corrupt or non-finite pixels) and the feature weights")


def _stream(model: Any, images: Iterable[Any], labels: list[list[str]] | None, sides: list[str],
            metrics: list[Metric], counts: dict[str, dict[str, int]], source: str | None = None) -> int:
    """Feed every batch of ``images`` to the metrics reading any of ``sides``; return the image count."""
    readers = [(side, [m for m in metrics if m.reads(side)]) for side in sides]
    offset = 0
    total = len(images) if hasattr(images, "__len__") else None
    with tqdm(total=total, desc=f"{sides[0]} features", unit="img", disable=None) as bar:
        for pixels, feats in model.iter_batches(images):
            _check_finite(feats, offset, sides[0], source)
            batch_labels = None if labels is None else labels[offset : offset + len(feats)]
            if labels is not None and len(batch_labels) != len(feats):
                raise UserError(f"{sides[0]} images: more images than label rows ({len(labels)})")
            if batch_labels is not None:
                for cond, idx in members(batch_labels, len(feats)).items():
                    counts[sides[0]][cond] = counts[sides[0]].get(cond, 0) + len(idx)
            for side, group in readers:
                batch = Batch(side, feats, batch_labels, pixels)
                for metric in group:
                    metric.update(batch)
            offset += len(feats)
            bar.update(len(feats))
    if labels is not None and offset != len(labels):
        raise UserError(f"{sides[0]} images: {offset} images but {len(labels)} label rows")
    return offset


def _check_request(names: tuple[str, ...], real: Any, training: Any, labels_syn: Any, labels_re: Any, opts: EvalOptions) -> None:
    if "inception_fid" in names and real is None:
        raise UserError("inception_fid needs real images")
    if opts.by_condition and labels_syn is None:
        raise UserError("by_condition needs labels for the synthetic images")
    for name in names:
        if name not in PASS_METRICS:
            metric_class(name).check_inputs(real=real is not None, training=training is not None,
                                            labels_synthetic=labels_syn is not None, labels_real=labels_re is not None,
                                            options=opts)


def _feature_metrics(names: tuple[str, ...], real: Any, synthetic: Any, training: Any, labels_re: Any, labels_syn: Any,
                     opts: EvalOptions) -> dict[str, Any]:
    from hf_cxr_diffusion.metrics.consistency import HeadsClassifier
    from hf_cxr_diffusion.metrics.extractor import load_feature_model

    model = load_feature_model(opts.feature_model, protocol=opts.protocol, weights=opts.weights,
                               weights_path=opts.weights_path, allow_random_weights=opts.allow_random_weights,
                               device=opts.device, batch_size=opts.batch_size)
    prov = model.provenance()
    classifier = opts.classifier if opts.classifier is not None else HeadsClassifier(model) if "class_consistency" in names else None
    context = Context(model.feature_dim, model.protocol.id, model.name, prov, classifier)
    metrics = [metric_class(n).from_options(context, opts) for n in dict.fromkeys("fid" if n in FID_ALIASES else n for n in names)
               if n in FEATURE_METRICS]
    counts: dict[str, dict[str, int]] = {"synthetic": {}, "real": {}, "training": {}}
    sets = [(synthetic, labels_syn, ["synthetic"])]
    mem_on_real = "memorisation" in names and training is None
    if real is not None and (any(m.reads("real") for m in metrics) or opts.by_condition):
        sets.append((real, labels_re, ["real", "training"] if mem_on_real else ["real"]))
    if training is not None and any(m.reads("training") for m in metrics):
        sets.append((training, None, ["training"]))
    n = {"synthetic": 0, "real": 0}
    try:
        for images, labels, sides in sets:
            n[sides[0]] = _stream(model, images, labels, sides, metrics, counts, (opts.sources or {}).get(sides[0]))
        if n["synthetic"] == 0:
            raise UserError("no synthetic images to evaluate")
        result: dict[str, Any] = {**prov, "protocol_details": model.protocol.describe(), "n_synthetic": n["synthetic"],
                                  "n_real": n["real"]}
        rows: dict[str, dict[str, Any]] = {}
        for metric in metrics:
            entry = metric.compute()
            key = metric.key if hasattr(metric, "key") else metric.name
            for cond, value in (entry.pop("by_condition", None) or {}).items():
                rows.setdefault(cond, {}).update(value if isinstance(value, dict) else {key: value})
            result[key] = entry
            if entry.get("not_computed"):
                logger.warning("%s not computed: %s", key, entry["not_computed"])
    finally:
        for metric in metrics:
            metric.close()
    if opts.by_condition:
        conditions = sorted(set(counts["synthetic"]) | set(counts["real"]) | set(rows))
        result["by_condition"] = {c: {"n_real": counts["real"].get(c, 0), "n_synthetic": counts["synthetic"].get(c, 0),
                                      **prov, **rows.get(c, {})} for c in conditions}
    return result


def evaluate_images(
    real: Iterable[Any] | None,
    synthetic: Iterable[Any],
    metrics: str | Iterable[str] = ("xrv_fid", "vendi"),
    *,
    labels_real: Labels = None,
    labels_synthetic: Labels = None,
    label_names: Sequence[str] | None = None,
    training: Iterable[Any] | None = None,
    prompts_synthetic: Sequence[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Compute ``metrics`` between real and synthetic images (PIL, numpy 8/16-bit, paths).

    - ``fid`` (reported as ``<feature model>_fid``; ``xrv_fid`` / ``phantom_fid`` name the model):
      Fréchet distance of the feature model's pooled features.
    - ``vendi``: Vendi score of order ``vendi_q`` (cosine kernel) of the synthetic set (and the real one).
    - ``class_consistency``: per prompted condition, the rate at which the classifier finds it
      (needs ``labels_synthetic``).
    - ``memorisation``: nearest-training-neighbour similarity of each synthetic image to
      ``training`` (the generator's training images), flagged above a threshold calibrated on the
      held-out ``real`` images (or a fixed ``memorisation_threshold``).
    - ``inception_fid``, ``clip_score``: their own passes (see :mod:`.inception`, :mod:`.clip_score`).

    Labels are per-image lists of positive finding names (or ids with ``label_names``); an empty
    list means "No Finding". ``options`` are the fields of :class:`EvalOptions`. Every result
    carries ``protocol``, ``feature_model``, the weights and their sha256, the library versions,
    the counts used, and ``"random_weights": True`` when the network was random.
    """
    opts = EvalOptions.from_kwargs(options)
    names = parse_metrics(metrics, opts.feature_model)
    n_syn = len(synthetic) if hasattr(synthetic, "__len__") else None
    labels_syn = to_label_names(labels_synthetic, label_names, n_syn, "synthetic")
    labels_re = to_label_names(labels_real, label_names, len(real) if hasattr(real, "__len__") else None, "real")
    _check_request(names, real, training, labels_syn, labels_re, opts)
    run_features = opts.by_condition or any(n not in PASS_METRICS for n in names)
    passes = {n: metric_class(n).from_options(opts) for n in names if n in PASS_METRICS}
    for name, metric in passes.items():
        metric.check(real, synthetic, prompts_synthetic=prompts_synthetic, second_pass=run_features or len(passes) > 1)

    result: dict[str, Any] = {"metrics": list(names)}
    if "clip_score" in passes:
        result["clip_score"] = passes.pop("clip_score").run(real, synthetic, prompts_synthetic=prompts_synthetic)
    if run_features:
        result.update(_feature_metrics(names, real, synthetic, training, labels_re, labels_syn, opts))
    for name, metric in passes.items():
        result[name] = metric.run(real, synthetic, prompts_synthetic=prompts_synthetic)
    if not run_features:
        counted = result.get("inception_fid") or {"n_synthetic": result["clip_score"]["n"], "n_real": 0}
        result.update(n_synthetic=counted["n_synthetic"], n_real=counted["n_real"])
    return result


def evaluate_features(
    real: np.ndarray | None,
    synthetic: np.ndarray,
    metrics: str | Iterable[str] = ("fid", "vendi"),
    *,
    vendi_q: float = 1.0,
    protocol: str | Protocol = "precomputed-features",
) -> dict[str, Any]:
    """FID / Vendi on precomputed ``n x d`` features (the caller vouches for their ``protocol``)."""
    from hf_cxr_diffusion.metrics.fid import FID
    from hf_cxr_diffusion.metrics.vendi import Vendi

    names = parse_metrics(metrics)
    protocol = protocol.id if isinstance(protocol, Protocol) else str(protocol)
    unsupported = {metric_class(n).name for n in names} - {"fid", "vendi"}
    if unsupported:
        raise UserError(f"metrics {sorted(unsupported)} need images, not precomputed features")
    syn = np.asarray(synthetic, dtype=np.float64)
    ref = None if real is None else np.asarray(real, dtype=np.float64)
    if syn.ndim != 2 or (ref is not None and (ref.ndim != 2 or ref.shape[1] != syn.shape[1])):
        raise UserError(f"feature arrays of shapes {syn.shape} (synthetic) and {None if ref is None else ref.shape} (real)")
    model = next((FID_ALIASES[n] for n in names if n in FID_ALIASES), "precomputed")
    context = Context(syn.shape[1], protocol, model, {"protocol": protocol})
    result: dict[str, Any] = {"n_real": 0 if ref is None else len(ref), "n_synthetic": len(syn), "protocol": protocol,
                              "metrics": list(names)}
    for name in names:
        metric: Metric = FID(context) if metric_class(name).name == "fid" else Vendi(context, q=vendi_q)
        if metric.name == "fid" and ref is None:
            raise UserError(f"{name} needs real features")
        metric.update(Batch("synthetic", syn))  # type: ignore[arg-type]
        if ref is not None:
            metric.update(Batch("real", ref))  # type: ignore[arg-type]
        result[name] = metric.compute()
    return result
