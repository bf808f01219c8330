"""The study's figures and ``report.md``.

- ``samples.png``: the paradigm paper's Figure 2 — rows are methods, columns conditions, every cell the
  first image of that condition, drawn at the same seed by every method;
- ``fid.png`` / ``vendi.png``: one bar per method, the base model as a dashed reference line;
- ``params_vs_fid.png``: trainable parameters (log scale) against FID;
- ``class_consistency.png``: method x condition heatmap;
- SeLoRA's rank heatmaps, written by the method into its training folder, are linked from the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hf_cxr_diffusion.io import write_text_atomic
from hf_cxr_diffusion.study.runner import StudyFolder
from hf_cxr_diffusion.study.tables import cell_values, render_tables, variants


def _first_runs(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """variant -> its first run (the first seed: the one the sample figure shows)."""
    out: dict[str, str] = {}
    for r in rows:
        out.setdefault(r["variant"], r["run"])
    return {v: out[v] for v in variants(rows)}


def sample_figure(folder: StudyFolder, summary: dict[str, Any], path: Path) -> Path:
    from PIL import Image

    from hf_cxr_diffusion.artefacts import synthetic_image_name
    from hf_cxr_diffusion.plots import labelled_grid

    per_condition = folder.read_identity()["identity"]["generation"]["per_condition"]
    conditions = summary["conditions"]
    runs = _first_runs(summary["rows"])
    grid = [[Image.open(folder.stage_dir(run, "generate") / synthetic_image_name(k * per_condition)).convert("L")
             for k in range(len(conditions))] for run in runs.values()]
    labelled_grid(grid, list(runs), [(c, 1) for c in conditions], path,
                  title="image 0 of each condition, same seed for every method")
    return path


def metric_bars(rows: Sequence[dict[str, Any]], column: str, path: Path, *, ylabel: str, title: str) -> Path:
    """One bar per method (mean over seeds), the base model's value as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_cxr_diffusion.plots import save_figure

    methods = [v for v in variants(rows) if not any(r["base"] for r in rows if r["variant"] == v)]
    values = [float(np.mean(cell_values(rows, v, column) or [np.nan])) for v in methods]
    base = [float(np.mean(cell_values(rows, v, column))) for v in variants(rows) if v not in methods and cell_values(rows, v, column)]
    fig, ax = plt.subplots(figsize=(0.55 * len(methods) + 2.0, 3.2))
    ax.bar(range(len(methods)), values, color="#4c72b0")
    for x, v in enumerate(values):
        ax.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    if base:
        ax.axhline(base[0], color="#d62728", linestyle="--", linewidth=1, label=f"base model {base[0]:.2f}")
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)
    return path


def params_vs_fid(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_cxr_diffusion.plots import save_figure

    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for v in variants(rows):
        params, fid = cell_values(rows, v, "trainable_parameters"), cell_values(rows, v, "fid")
        if params and fid and params[0] > 0:
            ax.scatter(np.mean(params), np.mean(fid), s=18)
            ax.annotate(v, (np.mean(params), np.mean(fid)), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(f"FID ({rows[0]['fid_metric']})")
    ax.set_title("trainable parameters vs FID", fontsize=9)
    save_figure(fig, path)
    return path


def consistency_heatmap(rows: Sequence[dict[str, Any]], conditions: Sequence[str], path: Path) -> Path:
    from hf_cxr_diffusion.plots import HeatmapPanel, plot_heatmaps

    names = variants(rows)
    values = np.array([[np.mean(cell_values(rows, v, "class_consistency", c) or [np.nan]) for c in conditions] for v in names])
    return plot_heatmaps([HeatmapPanel("class consistency (method x condition)", names, list(conditions), values,
                                       xlabel="condition", ylabel="method")], path, colorbar_label="class consistency")


def write_figures(folder: StudyFolder, summary: dict[str, Any], figures_dir: Path) -> dict[str, Path]:
    """Every figure of the study into ``figures_dir``; returns name -> path."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    rows = summary["rows"]
    return {
        "samples": sample_figure(folder, summary, figures_dir / "samples.png"),
        "fid": metric_bars(rows, "fid", figures_dir / "fid.png", ylabel=rows[0]["fid_metric"], title="FID (lower is better)"),
        "vendi": metric_bars(rows, "vendi", figures_dir / "vendi.png", ylabel="Vendi", title="Vendi score (higher is better)"),
        "params_vs_fid": params_vs_fid(rows, figures_dir / "params_vs_fid.png"),
        "class_consistency": consistency_heatmap(rows, summary["conditions"], figures_dir / "class_consistency.png"),
    }


def _cost_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| run | trainable params | train steps | train wall time (s) | s/step | peak memory (MiB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for run in dict.fromkeys(r["run"] for r in rows):
        r = next(x for x in rows if x["run"] == run)
        if r["base"]:
            continue
        lines.append(f"| {run} | {r['trainable_parameters']:,} | {r['train_steps']} | {r['train_wall_time_s']} | "
                     f"{r['seconds_per_step']} | {r['peak_memory_mib']} ({r['peak_memory_kind']}) |")
    return lines


def write_report(folder: StudyFolder, summary: dict[str, Any], figures: dict[str, Path], path: Path) -> Path:
    """``report.md``: the tables, the figures, what each run cost, and what is not complete."""
    from hf_cxr_diffusion.methods.selora.method import HEATMAP_FILE

    rows = summary["rows"]
    rel = {k: p.relative_to(path.parent).as_posix() for k, p in figures.items()}
    heatmaps = [(run, folder.stage_dir(run, "train") / HEATMAP_FILE) for run in dict.fromkeys(r["run"] for r in rows)]
    parts = [
        render_tables(summary), "## Samples", "", f"![samples]({rel['samples']})", "",
        "## Metrics", "", f"![FID]({rel['fid']}) ![Vendi]({rel['vendi']})", "",
        f"![trainable parameters vs FID]({rel['params_vs_fid']})", "", f"![class consistency]({rel['class_consistency']})", "",
    ]
    selora = [f"![{run}]({p.relative_to(path.parent).as_posix()})" for run, p in heatmaps if p.is_file()]
    if selora:
        parts += ["## SeLoRA rank heatmaps", "", *selora, ""]
    parts += ["## Cost", "", *_cost_table(rows), "",
              f"Git revision `{summary['git_revision']}`; study file `{summary['source']}`."]
    if summary["incomplete_runs"]:
        parts.append(f"Not complete yet (left out): {', '.join(summary['incomplete_runs'])}.")
    return write_text_atomic(path, "\n".join(parts) + "\n")
