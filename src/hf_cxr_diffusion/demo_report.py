"""The demo's ``report/`` folder: what a researcher looks at first.

``before_after.png`` (rows = conditions, columns = base | fine-tuned at the same seeds),
``class_consistency.png`` (per condition, base vs fine-tuned), ``loss_curve.png``, and
``summary.md`` (each section under the banner of the feature model and weights its numbers come from).
"""

from __future__ import annotations

import shutil
from typing import Any

from PIL import Image

from hf_cxr_diffusion.artefacts import LOSS_CURVE_FILE, synthetic_image_name
from hf_cxr_diffusion.downstream.report import RESULTS_MD
from hf_cxr_diffusion.io import ensure_output_dir, write_text_atomic

#: the report folder's files (``scripts/readme_demo.py`` reads them from a run)
SUMMARY_FILE, GRID_FILE, CONSISTENCY_FILE = "summary.json", "before_after.png", "class_consistency.png"
#: images per condition and model in the before/after grid
GRID_SEEDS = 4
#: metric -> (label, which direction is better)
TABLE = (
    ("phantom_fid", "phantom-FID vs real test phantoms", "lower"),
    ("vendi", "Vendi score (diversity)", "higher"),
    ("memorisation_flagged", "images flagged as near-duplicates of training images (16x16 pixel space)", "lower"),
)


def _images(ctx: Any, model: str) -> dict[str, list[Image.Image]]:
    """The first :data:`GRID_SEEDS` generated images of every condition (image i of both models shares its seed)."""
    from hf_cxr_diffusion.demo import CONDITIONS

    folder = ctx.path("synthetic") / model
    per = ctx.config.per_condition
    return {c: [Image.open(folder / synthetic_image_name(k * per + i)) for i in range(GRID_SEEDS)] for k, c in enumerate(CONDITIONS)}


def metrics_table(evaluation: dict[str, Any]) -> str:
    """Base vs fine-tuned for every metric, with the better one marked."""
    from hf_cxr_diffusion.demo import CONDITIONS

    base, tuned = evaluation["base"], evaluation["finetuned"]
    rows = ["| metric | base (phantom-base) | fine-tuned (LoRA) | better |", "|---|---:|---:|---|"]

    def row(label: str, a: float, b: float, direction: str, fmt: str = ".3f") -> None:
        winner = "—" if a == b else ("fine-tuned" if (b < a) == (direction == "lower") else "base")
        rows.append(f"| {label} ({direction} is better) | {a:{fmt}} | {b:{fmt}} | {winner} |")

    for key, label, direction in TABLE:
        row(label, base[key], tuned[key], direction, "d" if key == "memorisation_flagged" else ".3f")
    for condition in CONDITIONS:
        row(f"class consistency: {condition}", base["class_consistency"][condition], tuned["class_consistency"][condition],
            "higher")
    return "\n".join(rows) + "\n"


def write_demo_report(ctx: Any) -> dict[str, Any]:
    """Write the report folder from the earlier stages' outputs; return what it holds."""
    from hf_cxr_diffusion.demo import BANNER, CONDITIONS, DISCLAIMER, PROMPT
    from hf_cxr_diffusion.plots import grouped_bars, labelled_grid

    report = ensure_output_dir(ctx.path("report"))
    base, tuned = _images(ctx, "base"), _images(ctx, "finetuned")
    labelled_grid([base[c] + tuned[c] for c in CONDITIONS], [f'"{c}"' for c in CONDITIONS],
                  [("base (phantom-base)", GRID_SEEDS), ("fine-tuned (LoRA)", GRID_SEEDS)], report / GRID_FILE,
                  title=f"{PROMPT.format('<condition>')}, same seeds per column")
    evaluation = ctx.results["evaluate"]
    grouped_bars(list(CONDITIONS), {m: [evaluation[m]["class_consistency"][c] for c in CONDITIONS] for m in ("base", "finetuned")},
                 report / CONSISTENCY_FILE, ylabel="class consistency", ylim=(0, 1.1),
                 title="Generated images the phantom classifier finds the prompted condition in")
    shutil.copyfile(ctx.path("train") / LOSS_CURVE_FILE, report / LOSS_CURVE_FILE)
    stages = "\n".join(
        f"| {stage} | {info['seconds']:.1f} |" for stage, info in ctx.results.items()
    )
    classify = (ctx.path("classify") / RESULTS_MD).read_text(encoding="utf-8")
    text = f"""# hf-cxr-diffusion demo

> {DISCLAIMER}

## Before and after fine-tuning

![base vs fine-tuned, same seeds]({GRID_FILE})

{BANNER}

{metrics_table(evaluation)}
Protocol `{evaluation['finetuned']['protocol']}`; real reference: the {ctx.results['prepare']['rows']['test']} held-out test phantoms;
memorisation threshold calibrated on them (base {evaluation['base']['memorisation_threshold']}, fine-tuned
{evaluation['finetuned']['memorisation_threshold']}); full reports in `evaluation/base/` and `evaluation/finetuned/`.

![class consistency per condition]({CONSISTENCY_FILE})

![LoRA training loss](loss_curve.png)

## Classifiers trained on real and synthetic phantoms

> Classifier: a small CNN trained from scratch on phantoms; tested on the real test phantoms. Not a medical classifier.

{classify}
## Stage timings (seconds)

| stage | seconds |
|---|---:|
{stages}
"""
    write_text_atomic(report / "summary.md", text)
    return {"report": str(report), "grid": str(report / GRID_FILE)}
