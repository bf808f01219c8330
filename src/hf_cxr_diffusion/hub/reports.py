"""The rows cards and ``model-index`` show for a report written by ``cxr-diffusion evaluate``.

The report is read with :func:`hf_cxr_diffusion.artefacts.read_report` (the one schema the
metrics write); this module only names and orders the metrics for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hf_cxr_diffusion.artefacts import Report, find_report, read_report

#: report key -> display name, in the order cards list them (others follow under their own key)
DISPLAY_NAMES: dict[str, str] = {
    "xrv_fid": "XRV-FID",
    "fid": "FID",
    "inception_fid": "Inception FID",
    "vendi": "Vendi score",
    "class_consistency": "Class consistency",
    "memorisation": "Memorisation (fraction above threshold)",
    "clip_score": "CLIP score",
}


@dataclass(frozen=True)
class MetricRow:
    """One computed metric as a card shows it."""

    key: str
    name: str
    value: float
    protocol: str
    weights: str
    random_weights: bool


def metric_rows(report: Report) -> list[MetricRow]:
    """The metrics of ``report`` that have a value, known ones first."""
    order = [*[k for k in DISPLAY_NAMES if k in report.metrics], *sorted(set(report.metrics) - set(DISPLAY_NAMES))]
    return [
        MetricRow(key, DISPLAY_NAMES.get(key, key), m.value, m.protocol, m.weights or "-", m.random_weights)
        for key in order
        if (m := report.metrics[key]).value is not None
    ]


def load_rows(src: Path, report: Path | None = None) -> tuple[Path | None, list[MetricRow]]:
    """Rows of ``report`` (default: the report found in ``src``); ``(None, [])`` when there is none."""
    path = report if report is not None else find_report(src)
    if path is None:
        return None, []
    return path, metric_rows(read_report(path))
