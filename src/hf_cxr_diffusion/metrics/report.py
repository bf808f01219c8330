"""Write an evaluation result as JSON (the versioned schema of :mod:`hf_cxr_diffusion.artefacts`) +
a Markdown table + a bar chart PNG, side by side."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hf_cxr_diffusion import artefacts
from hf_cxr_diffusion.io import atomic_path, write_text_atomic
from hf_cxr_diffusion.metrics.catalog import METRICS, metric_class

#: (result key, column title, key inside the per-condition row): FID under the name of the features that made it
_COLUMNS = (("xrv_fid", "XRV-FID ↓", "xrv_fid"), ("phantom_fid", "phantom-FID ↓", "phantom_fid"), ("vendi", "Vendi ↑", "vendi"))


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _overall_row(result: dict[str, Any]) -> dict[str, Any]:
    return {key: (result.get(key) or {}).get("score") for key, _, _ in _COLUMNS}


def markdown_table(result: dict[str, Any]) -> str:
    """A Markdown summary: overall row, per-condition rows, class consistency and memorisation."""
    cols = [c for c in _COLUMNS if c[0] in result]
    header = (f"protocol {result['protocol']}, {result.get('feature_model')} features, weights {result.get('weights')}"
              if result.get("protocol") else ", ".join(result.get("metrics", [])))
    lines = [f"# Evaluation ({header})", ""]
    if result.get("random_weights"):
        lines += ["> **RANDOM WEIGHTS**: the feature network is random; numbers test the pipeline only.", ""]
    if result.get("feature_model") == "phantom":
        lines += ["> Phantom feature network: these numbers measure phantom radiographs, not medical image quality.", ""]
    for key, title, _ in cols:
        if (result.get(key) or {}).get("not_computed"):
            lines += [f"- {title.split()[0]} not computed: {result[key]['not_computed']}", ""]
    if cols:
        lines += [
            "| condition | n real | n synthetic | " + " | ".join(t for _, t, _ in cols) + " | Vendi n |",
            "|---|---:|---:|" + "---:|" * len(cols) + "---:|",
        ]
        overall = _overall_row(result)
        lines.append(
            f"| **all** | {result['n_real']} | {result['n_synthetic']} | "
            + " | ".join(_fmt(overall[k]) for k, _, _ in cols)
            + f" | {result['n_synthetic']} |"
        )
        for cond, row in (result.get("by_condition") or {}).items():
            lines.append(
                f"| {cond} | {row['n_real']} | {row['n_synthetic']} | "
                + " | ".join(_fmt(row.get(k)) for _, _, k in cols)
                + f" | {_fmt(row.get('vendi_n'))} |"
            )
        lines.append("")
    if "class_consistency" in result:
        cc = result["class_consistency"]
        lines += ["## Class consistency", "", "| condition | rate | correct | n |", "|---|---:|---:|---:|"]
        lines += [f"| {c} | {v['rate']:.3f} | {v['correct']} | {v['n']} |" for c, v in cc["per_condition"].items()]
        lines += ["", f"Classifier: {cc.get('classifier')}; a finding counts when its probability >= {cc['threshold']}."]
        if cc["unsupported_labels"]:
            lines += ["", f"Labels the classifier cannot predict (not scored): {cc['unsupported_labels']}"]
        lines.append("")
    if "inception_fid" in result:
        inc = result["inception_fid"]
        lines += ["## Inception-FID (pytorch-fid weights, protocol inception-fid-v1)", "", "| dims | FID |", "|---:|---:|"]
        lines += [f"| {d} | {_fmt(v)} |" for d, v in inc["scores"].items()]
        lines.append("")
    if "clip_score" in result:
        cs = result["clip_score"]
        lines += [
            f"## CLIP score (model `{cs['clip_model']}`, protocol {cs['protocol']})",
            "",
            f"- mean {_fmt(cs['score'])} ± {_fmt(cs['std'])} (std) over n = {cs['n']} image-prompt pairs",
            f"- prompts truncated to the tokenizer's limit: {cs['n_prompts_truncated']}",
            "",
        ]
    if "memorisation" in result:
        mem = result["memorisation"]
        lines += [
            f"## Memorisation (nearest training neighbour, cosine of {result.get('feature_model', '')} features)",
            "",
            f"- flagged (similarity > {mem['threshold']:.4f}, {mem.get('threshold_method', 'fixed')} threshold): "
            f"{mem['n_flagged']} of {mem['n_synthetic']} ({100 * mem['fraction_above_threshold']:.2f}%)",
            f"- max {mem['similarity']['max']:.4f}, mean {mem['similarity']['mean']:.4f}",
        ]
        if mem.get("calibration"):
            lines.append(f"- threshold: {mem['calibration']['how']} (n = {mem['calibration']['n_held_out']})")
        if mem.get("grid"):
            lines.append(f"- closest pairs: `{Path(mem['grid']).name}`")
        lines.append("")
    return "\n".join(lines)


def bar_chart(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """One bar panel per metric (overall and per condition)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for key, title, row_key in _COLUMNS:
        if key not in result:
            continue
        bars = {"all": _overall_row(result)[key]}
        bars.update({c: r.get(row_key) for c, r in (result.get("by_condition") or {}).items()})
        panels.append((title, {k: v for k, v in bars.items() if v is not None}))
    if "class_consistency" in result:
        per = result["class_consistency"]["per_condition"]
        panels.append(("class consistency ↑", {c: v["rate"] for c, v in per.items()}))
    if "clip_score" in result and result["clip_score"]["score"] is not None:
        panels.append(("CLIP score ↑", {"all": result["clip_score"]["score"]}))
    if "memorisation" in result:
        panels.append(("fraction memorised ↓", {"all": result["memorisation"]["fraction_above_threshold"]}))
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(3.6 * max(1, len(panels)), 3.4), dpi=110, squeeze=False)
    for ax, (title, bars) in zip(axes[0], panels):
        ax.bar(list(bars), list(bars.values()), color="#4c72b0")
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    suffix = "  [RANDOM WEIGHTS]" if result.get("random_weights") else ""
    fig.suptitle(f"{result.get('protocol') or ', '.join(result.get('metrics', []))}{suffix}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def to_report(result: dict[str, Any]) -> artefacts.Report:
    """The :class:`~hf_cxr_diffusion.artefacts.Report` of an :func:`evaluate_images` result: one
    :class:`~hf_cxr_diffusion.artefacts.MetricResult` per metric entry (its class's headline number and
    direction, the protocol and weights it carries), the rest of the result as context."""
    metrics = {}
    for key in METRICS:
        entry = result.get(key)
        if not isinstance(entry, dict):
            continue
        cls = metric_class(key)
        metrics[key] = artefacts.MetricResult(
            name=key,
            value=cls.headline(entry),
            higher_is_better=bool(cls.higher_is_better),
            protocol=str(entry.get("protocol") or result.get("protocol") or "unspecified"),
            weights=entry.get(cls.weights_key),
            random_weights=bool(entry.get("random_weights", False)),
            details=entry,
        )
    context = {k: v for k, v in result.items() if k not in metrics and k != "metrics"}
    return artefacts.Report(metrics, context)


def write_report(result: dict[str, Any], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write :data:`~hf_cxr_diffusion.artefacts.REPORT_FILE` into ``output_dir`` (through
    :func:`hf_cxr_diffusion.artefacts.write_report`) and, next to it, its Markdown table and bar chart."""
    json_path = Path(output_dir) / artefacts.REPORT_FILE
    return {
        "json": artefacts.write_report(json_path, to_report(result)),
        "markdown": write_text_atomic(json_path.with_name(artefacts.REPORT_MARKDOWN_FILE), markdown_table(result)),
        "png": bar_chart(result, json_path.with_name(artefacts.REPORT_CHART_FILE)),
    }
