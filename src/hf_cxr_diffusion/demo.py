"""``cxr-diffusion demo``: the whole job, offline, on the embedded tiny default.

Builds the tiny Stable Diffusion pipeline and a phantom CheXpert-layout corpus, prepares a
prompts dataset, fine-tunes with LoRA, generates a small synthetic set, measures it, runs the
real-vs-synthetic classifier experiment, exports Hub-ready folders (no upload), and writes a report
folder (sample grid, loss curve, JSON/Markdown summary).

The numbers it prints come from a random-initialised model and procedural phantoms: they show that
the software runs end to end, nothing about medical image quality.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.io import ensure_output_dir, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

DISCLAIMER = (
    "Demo on a tiny random-initialised model and procedural phantoms: it exercises the software; "
    "its numbers say nothing about medical image quality."
)


@dataclass
class DemoContext:
    """Paths and results shared between demo stages."""

    out: Path
    seed: int = 0
    resolution: int = 64
    train_steps: int = 200
    results: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.out / name


def _stage_model(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.models.tiny import make_tiny_model

    model = make_tiny_model(ctx.path("tiny-sd"), seed=ctx.seed, resolution=ctx.resolution)
    return {"pretrained_model": str(model)}


def _stage_corpus(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.data.phantoms import make_phantoms

    corpus = make_phantoms(ctx.path("corpus"), layout="chexpert", n=120, seed=ctx.seed, resolution=ctx.resolution)
    return {"corpus": str(corpus), "layout": "chexpert", "images": 120}


def _stage_prepare(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.data.prepare import prepare

    prepared = prepare("chexpert", ctx.path("corpus"), ctx.path("prepared"), resolution=ctx.resolution, template="findings")
    info = json.loads((prepared / "prepare_info.json").read_text())
    return {"prepared": str(prepared), "rows": info["num_rows"], "skipped": info["skipped"]}


def _stage_report(ctx: DemoContext) -> dict[str, Any]:
    report = ensure_output_dir(ctx.path("report"))
    lines = ["# hf-cxr-diffusion demo", "", f"> {DISCLAIMER}", "", "| stage | seconds | outputs |", "|---|---|---|"]
    for stage, info in ctx.results.items():
        outputs = ", ".join(f"{k}={v}" for k, v in info.items() if k != "seconds")
        lines.append(f"| {stage} | {info.get('seconds', 0):.1f} | {outputs} |")
    write_text_atomic(report / "summary.md", "\n".join(lines) + "\n")
    write_json_atomic(report / "summary.json", {"disclaimer": DISCLAIMER, "stages": ctx.results})
    return {"report": str(report)}


STAGES: tuple[tuple[str, Callable[[DemoContext], dict[str, Any]]], ...] = (
    ("model", _stage_model),
    ("corpus", _stage_corpus),
    ("prepare", _stage_prepare),
)


def run_demo(out_dir: str | Path, *, seed: int = 0, train_steps: int = 200, overwrite: bool = True) -> dict[str, Any]:
    """Run every stage into ``out_dir``; return the per-stage summary (also written to ``report/``)."""
    out = Path(out_dir)
    if overwrite and out.exists():
        shutil.rmtree(out)
    ctx = DemoContext(out=ensure_output_dir(out), seed=seed, train_steps=train_steps)
    for name, stage in (*STAGES, ("report", _stage_report)):
        logger.info("demo stage %s ...", name)
        start = time.perf_counter()
        info = stage(ctx)
        info["seconds"] = round(time.perf_counter() - start, 2)
        ctx.results[name] = info
        logger.info("demo stage %s done in %.1fs", name, info["seconds"])
    return ctx.results
