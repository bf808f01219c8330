"""The metric names: which accumulator or pass implements each, imported on first use.

Feature metrics (:class:`~hf_cxr_diffusion.metrics.base.Metric` accumulators) share one streaming
pass of the feature model; pass metrics (Inception-FID, CLIP score) run their own network.
``xrv_fid`` / ``phantom_fid`` are ``fid`` with the feature model named; the result key always
names the feature model that made the number.
"""

from __future__ import annotations

from collections.abc import Iterable

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.registry import Registry

#: name -> "module:Class" of the accumulators that read the feature model's stream
FEATURE_METRICS = {
    "fid": "hf_cxr_diffusion.metrics.fid:FID",
    "vendi": "hf_cxr_diffusion.metrics.vendi:Vendi",
    "class_consistency": "hf_cxr_diffusion.metrics.consistency:ClassConsistency",
    "memorisation": "hf_cxr_diffusion.metrics.memorisation:Memorisation",
}
#: name -> "module:Class" of the metrics that make their own pass over the images
PASS_METRICS = {
    "inception_fid": "hf_cxr_diffusion.metrics.inception:InceptionFID",
    "clip_score": "hf_cxr_diffusion.metrics.clip_score:CLIPScore",
}
#: spellings of ``fid`` that name the feature model
FID_ALIASES = {"xrv_fid": "xrv", "phantom_fid": "phantom"}
METRICS = ("xrv_fid", "phantom_fid", *FEATURE_METRICS, *PASS_METRICS)
#: every metric name (FID aliases included) -> its class, imported on first use
METRIC_CLASSES: Registry[type] = Registry(
    "metric", {**{a: FEATURE_METRICS["fid"] for a in FID_ALIASES}, **FEATURE_METRICS, **PASS_METRICS}, option="--metrics"
)


def metric_class(name: str) -> type:
    """The class implementing metric ``name`` (a feature accumulator or a pass metric)."""
    return METRIC_CLASSES[name]


def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric ``name`` is better (FID, memorisation: no; Vendi, consistency: yes)."""
    return bool(metric_class(name).higher_is_better)


def parse_metrics(metrics: str | Iterable[str], feature_model: str | None = None) -> tuple[str, ...]:
    """Validate metric names (a comma-separated string or an iterable), in order, without repeats.

    With ``feature_model``, an FID alias naming another feature model (``xrv_fid`` with
    ``phantom``) is an error: a number is never reported under another network's name.
    """
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    unknown = sorted(set(names) - set(METRICS))
    if unknown or not names:
        raise UserError(f"unknown or empty metrics {unknown or names}; choose from {', '.join(METRICS)}")
    if feature_model is not None:
        for name in names:
            if FID_ALIASES.get(name, feature_model) != feature_model:
                raise UserError(
                    f"metric {name!r} is FID on {FID_ALIASES[name]} features, but the feature model is {feature_model!r}; "
                    f"ask for 'fid' (reported as {feature_model}_fid) or pass --feature-model {FID_ALIASES[name]}"
                )
    return tuple(dict.fromkeys(names))
