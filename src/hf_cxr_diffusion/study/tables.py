"""``tables.md``: the study's rows in the layouts of the papers' tables.

- the paradigm paper's Table 3 (Pixels Under Pressure, /work/shared/papers/pixels-under-pressure.txt):
  one row per trained component / method, FID (lower is better), Vendi (higher), then class
  consistency in percent per condition, conditions abbreviated as the paper does (Ca, Lo, Ed, Nf, Pn, Pe);
- its Table 4: accuracy in percent per condition of a classifier trained on synthetic images only and
  tested on real ones;
- the SeLoRA paper's Table 1 (Mao et al.): trainable parameters of the text encoder and the U-Net in
  percent, FID, CLIP score, then FID at the 64- and 192-dimensional Inception features.

A cell is the mean over the study's seeds of one ``results.json`` column for the rows of that variant
(and condition), shown as ``mean ± sd`` when there are several seeds; an empty cell is ``—``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.io import write_text_atomic

#: the paradigm paper's abbreviations of its six conditions
ABBREVIATIONS = {"Cardiomegaly": "Ca", "Lung Opacity": "Lo", "Edema": "Ed", "No Finding": "Nf", "Pneumothorax": "Pn",
                 "Pleural Effusion": "Pe"}
EMPTY = "—"


def abbreviation(condition: str) -> str:
    return ABBREVIATIONS.get(condition, condition)


def variants(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The tables' row order: the base model first, then the study's order."""
    seen = dict.fromkeys(r["variant"] for r in rows if r["base"])
    seen.update(dict.fromkeys(r["variant"] for r in rows if not r["base"]))
    return list(seen)


def cell_values(rows: Sequence[dict[str, Any]], variant: str, column: str, condition: str | None = None) -> list[float]:
    """The values (one per seed) behind one cell: ``column`` of the variant's rows (of ``condition``, or per run)."""
    picked = [r for r in rows if r["variant"] == variant and (condition is None or r["condition"] == condition)]
    if condition is None:  # a run-level number repeats in each condition row: once per run
        picked = list({r["run"]: r for r in picked}.values())
    return [float(r[column]) for r in picked if r.get(column) is not None]


def format_cell(values: Sequence[float], digits: int, scale: float = 1.0) -> str:
    """``mean`` or ``mean ± sd`` (sample sd over seeds) at ``digits`` decimals, or ``—``."""
    if not values:
        return EMPTY
    scaled = [v * scale for v in values]
    mean = statistics.fmean(scaled)
    if len(scaled) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(scaled):.{digits}f}"


def _label(rows: Sequence[dict[str, Any]], variant: str) -> str:
    row = next(r for r in rows if r["variant"] == variant)
    return row["label"] if row["label"] == variant or row["base"] else f"{row['label']} (`{variant}`)"


def _table(rows: Sequence[dict[str, Any]], header: list[str], align: list[str],
           cells: Callable[[str], list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join([_label(rows, v), *cells(v)]) + " |" for v in variants(rows)]
    return lines


def paradigm_table3(rows: Sequence[dict[str, Any]], conditions: Sequence[str]) -> list[str]:
    """Table 3: FID, Vendi and class consistency (%) per condition."""
    fid = rows[0]["fid_metric"] if rows else "fid"
    header = ["Models Trainable Component", f"FID↓ ({fid})", "Vendi↑", *(f"Class Consistency↑ {abbreviation(c)}" for c in conditions)]
    return _table(rows, header, ["---", "---:", "---:", *("---:" for _ in conditions)], lambda v: [
        format_cell(cell_values(rows, v, "fid"), 2), format_cell(cell_values(rows, v, "vendi"), 2),
        *(format_cell(cell_values(rows, v, "class_consistency", c), 1, 100) for c in conditions)])


def paradigm_table4(rows: Sequence[dict[str, Any]], conditions: Sequence[str]) -> list[str]:
    """Table 4: accuracy (%) per condition of the classifier trained on synthetic images, tested on real ones."""
    return _table(rows, ["Model", *(abbreviation(c) for c in conditions)], ["---", *("---:" for _ in conditions)],
                  lambda v: [format_cell(cell_values(rows, v, "utility_accuracy", c), 1, 100) for c in conditions])


def selora_table1(rows: Sequence[dict[str, Any]]) -> list[str]:
    """SeLoRA Table 1: trainable parameters (%), FID, CLIP score, FID at 64 and 192 Inception dims."""
    fid_column = "inception_fid_2048" if any(r.get("inception_fid_2048") is not None for r in rows) else "fid"
    fid_name = "Inception, 2048" if fid_column == "inception_fid_2048" else rows[0]["fid_metric"]
    header = ["Method", "Trainable params: Text Encoder (%)", "Trainable params: U-Net (%)", f"FID↓ ({fid_name})",
              "CLIP Score↑", "FID↓ (64)", "FID↓ (192)"]
    return _table(rows, header, ["---", *("---:" for _ in header[1:])], lambda v: [
        format_cell(cell_values(rows, v, "trainable_percent_text_encoder"), 3),
        format_cell(cell_values(rows, v, "trainable_percent_unet"), 3),
        format_cell(cell_values(rows, v, fid_column), 2), format_cell(cell_values(rows, v, "clip_score"), 2),
        format_cell(cell_values(rows, v, "inception_fid_64"), 2), format_cell(cell_values(rows, v, "inception_fid_192"), 2)])


def render_tables(summary: dict[str, Any]) -> str:
    """The Markdown of ``tables.md`` from the collected ``summary`` (``results.json``'s content)."""
    rows, conditions = summary["rows"], summary["conditions"]
    legend = ", ".join(f"{abbreviation(c)}: {c}" for c in conditions if abbreviation(c) != c)
    protocols = sorted({f"`{r['protocol']}` ({r['feature_model']} features)" for r in rows})
    experiment = next((r["utility_experiment"] for r in rows if r["utility_experiment"]), None)
    seeds = summary["seeds"]
    spread = f"mean ± sd over seeds {seeds}" if len(seeds) > 1 else f"seed {seeds[0]}"
    parts = [
        f"# Study tables ({summary.get('name') or 'study'})", "",
        f"Every cell is a `results.json` row's column ({spread}); protocol {', '.join(protocols)}.", "",
        "## Quality and consistency of the synthesized images (paradigm paper, Table 3 layout)", "",
        *paradigm_table3(rows, conditions), "",
        f"Class consistency in percent of generated images the classifier finds the prompted condition in.{' ' + legend if legend else ''}", "",
        "## Accuracy across conditions, trained on synthetic images only (paradigm paper, Table 4 layout)", "",
    ]
    if experiment:
        parts += [*paradigm_table4(rows, conditions), "",
                  f"One-vs-rest accuracy in percent on the real test images of the `{experiment}` classifier "
                  f"(`utility_accuracy`; `utility_majority_rate` is always answering the majority).", ""]
    else:
        parts += ["No utility experiment in this study.", ""]
    parts += ["## Trainable parameters and fidelity (SeLoRA paper, Table 1 layout)", "", *selora_table1(rows), ""]
    return "\n".join(parts)


def write_tables(summary: dict[str, Any], path: Path) -> Path:
    return write_text_atomic(path, render_tables(summary))
