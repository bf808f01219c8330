"""Read a metrics report written by ``cxr-diffusion evaluate`` into rows for cards and model-index.

The report is a JSON object; metrics may sit at the top level or under ``"metrics"`` /
``"results"``. Each known metric is a number or an object holding its value under one of
``score``, ``value``, the metric's own name, ``fid``, ``mean``, ``rate`` or
``fraction_above_threshold``, with optional ``protocol`` and ``random_weights``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.hub.files import read_json

#: report key -> display name, in the order cards list them
KNOWN_METRICS: dict[str, str] = {
    "xrv_fid": "XRV-FID",
    "fid": "FID",
    "inception_fid": "Inception FID",
    "vendi": "Vendi score",
    "class_consistency": "Class consistency",
    "memorisation": "Memorisation (fraction above threshold)",
    "clip_score": "CLIP score",
}
_VALUE_KEYS = ("score", "value", "fid", "mean", "rate", "fraction_above_threshold", "overall")
#: files a training / generation output may hold its report in, first match wins
REPORT_NAMES: tuple[str, ...] = ("metrics.json", "report.json", "metrics/report.json", "evaluation/report.json")


@dataclass(frozen=True)
class MetricRow:
    key: str
    name: str
    value: float
    protocol: str
    random_weights: bool


def find_report(src: Path) -> Path | None:
    """The first of :data:`REPORT_NAMES` present in ``src``."""
    return next((src / name for name in REPORT_NAMES if (src / name).is_file()), None)


def _value(key: str, entry: Any) -> float | None:
    if isinstance(entry, bool):
        return None
    if isinstance(entry, (int, float)):
        return float(entry)
    if isinstance(entry, dict):
        for name in (*_VALUE_KEYS[:2], key, *_VALUE_KEYS[2:]):
            if name in entry and isinstance(entry[name], (int, float)) and not isinstance(entry[name], bool):
                return float(entry[name])
    return None


def metric_rows(report: dict[str, Any]) -> list[MetricRow]:
    """The known metrics of ``report`` that carry a numeric value."""
    scope = report.get("metrics") or report.get("results") or report
    rows = []
    for key, name in KNOWN_METRICS.items():
        entry = scope.get(key) if isinstance(scope, dict) else None
        value = _value(key, entry)
        if value is None:
            continue
        extra = entry if isinstance(entry, dict) else {}
        rows.append(
            MetricRow(
                key=key,
                name=name,
                value=value,
                protocol=str(extra.get("protocol", report.get("protocol", "-"))),
                random_weights=bool(extra.get("random_weights", report.get("random_weights", False))),
            )
        )
    return rows


def load_rows(src: Path) -> tuple[Path | None, list[MetricRow]]:
    """Find and parse the report in ``src``; ``(None, [])`` when there is none."""
    path = find_report(src)
    if path is None:
        return None, []
    report = read_json(path)
    return path, metric_rows(report) if isinstance(report, dict) else []
