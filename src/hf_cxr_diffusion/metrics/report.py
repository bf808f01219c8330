"""Write an evaluation result as JSON (the versioned schema of :mod:`hf_cxr_diffusion.artefacts`) +
a Markdown table + a bar chart PNG, side by side."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hf_cxr_diffusion import artefacts
from hf_cxr_diffusion.io import atomic_path, write_text_atomic

#: metric -> (key of its headline number in the result entry, whether higher is better)
HEADLINES: dict[str, tuple[str, bool]] = {
    "xrv_fid": ("score", False),
    "vendi": ("score", True),
    "class_consistency": ("mean_rate", True),
    "memorisation": ("fraction_above_threshold", False),
    "inception_fid": ("scores", False),  # the largest feature dimension's FID
    "clip_score": ("score", True),
}

#: (result key, column title, key inside the per-condition row)
_COLUMNS = (("xrv_fid", "XRV-FID ↓", "xrv_fid"), ("vendi", "Vendi ↑", "vendi"))


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _overall_row(result: dict[str, Any]) -> dict[str, Any]:
    return {key: (result.get(key) or {}).get("score") for key, _, _ in _COLUMNS}


def markdown_table(result: dict[str, Any]) -> str:
    """A Markdown summary: overall row, per-condition rows, class consistency and memorisation."""
    cols = [c for c in _COLUMNS if c[0] in result]
    header = f"{result['protocol']}, weights {result.get('weights')}" if result.get("protocol") else ", ".join(result.get("metrics", []))
    lines = [f"# Evaluation ({header})", ""]
    if result.get("random_weights"):
        lines += ["> **RANDOM WEIGHTS**: the DenseNet is random; numbers test the pipeline only.", ""]
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
            "## Memorisation (nearest training neighbour, cosine of xrv features)",
            "",
            f"- flagged (similarity > {mem['threshold']}): {mem['n_flagged']} of {mem['n_synthetic']} "
            f"({100 * mem['fraction_above_threshold']:.2f}%)",
            f"- max {mem['similarity']['max']:.4f}, mean {mem['similarity']['mean']:.4f}",
        ]
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


def _headline(name: str, entry: dict[str, Any]) -> float | None:
    value = entry.get(HEADLINES[name][0])
    if isinstance(value, dict):  # inception_fid: {dims: fid}
        value = value[max(value, key=int)] if value else None
    return None if value is None else float(value)


def to_report(result: dict[str, Any]) -> artefacts.Report:
    """The :class:`~hf_cxr_diffusion.artefacts.Report` of an :func:`evaluate_images` result: one
    :class:`~hf_cxr_diffusion.artefacts.MetricResult` per metric, the rest as context."""
    names = [n for n in result.get("metrics", []) if n in HEADLINES and isinstance(result.get(n), dict)]
    metrics = {
        name: artefacts.MetricResult(
            name=name,
            value=_headline(name, result[name]),
            higher_is_better=HEADLINES[name][1],
            protocol=str(result[name].get("protocol") or result.get("protocol") or "unspecified"),
            weights=result[name].get("weights") or result[name].get("clip_model") or result.get("weights"),
            random_weights=bool(result[name].get("random_weights", result.get("random_weights", False))),
            details=result[name],
        )
        for name in names
    }
    context = {k: v for k, v in result.items() if k not in metrics and k != "metrics"}
    return artefacts.Report(metrics, context)


def write_report(result: dict[str, Any], json_path: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.json`` (:func:`hf_cxr_diffusion.artefacts.write_report`) and, next to it,
    ``report.md`` and ``report.png``; return the paths."""
    json_path = Path(json_path)
    return {
        "json": artefacts.write_report(json_path, to_report(result)),
        "markdown": write_text_atomic(json_path.with_suffix(".md"), markdown_table(result)),
        "png": bar_chart(result, json_path.with_suffix(".png")),
    }
