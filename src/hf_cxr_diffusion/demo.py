"""``cxr-diffusion demo``: the whole job, offline, on the embedded tiny default.

Builds the tiny Stable Diffusion pipeline and a phantom CheXpert-layout corpus, prepares a
prompts dataset, fine-tunes with LoRA, generates a small synthetic set, measures it, runs the
real-vs-synthetic classifier experiment, exports Hub-ready folders (no upload), and writes a report
folder (sample grid, loss curve, JSON/Markdown summary).

The numbers it prints come from a random-initialised model and procedural phantoms: they show that
the software runs end to end, nothing about medical image quality.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.io import ensure_output_dir, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

PROMPTS = {"normal": "Chest X-ray of a subject with No Finding", "pneumonia": "Chest X-ray of a subject with Pneumonia"}
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
    n_images: int = 400
    per_class: int = 8
    results: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.out / name


def _stage_model(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.models.tiny import make_tiny_model

    model = make_tiny_model(ctx.path("tiny-sd"), seed=ctx.seed, resolution=ctx.resolution)
    return {"pretrained_model": str(model)}


def _stage_corpus(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.phantoms.corpus import make_phantoms

    corpus = make_phantoms(ctx.path("corpus"), layout="pneumonia", n=ctx.n_images, seed=ctx.seed, resolution=ctx.resolution)
    return {"corpus": str(corpus), "layout": "pneumonia", "images": ctx.n_images}


def _stage_prepare(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.data.prepare import prepare

    prepared = prepare(corpus="pneumonia", data_dir=ctx.path("corpus"), output_dir=ctx.path("prepared"),
                       resolution=ctx.resolution, template="findings")
    return {"prepared": str(prepared.output_dir), "rows": prepared.info["num_rows"], "skipped": prepared.info["skipped"]}


def _stage_train(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.training import TrainConfig, train

    result = train(
        TrainConfig(
            pretrained_model=str(ctx.path("tiny-sd")),
            dataset=str(ctx.path("prepared")),
            output_dir=str(ctx.path("train")),
            method="lora",
            method_config={"rank": 4, "lora_alpha": 4},
            resolution=ctx.resolution,
            train_batch_size=8,
            max_train_steps=ctx.train_steps,
            learning_rate=1e-3,
            lr_scheduler="cosine",
            lr_warmup_steps=10,
            checkpointing_steps=max(ctx.train_steps // 2, 1),
            checkpoints_total_limit=1,
            validation_prompts=[PROMPTS["normal"], PROMPTS["pneumonia"]],
            num_validation_inference_steps=10,
            seed=ctx.seed,
        )
    )
    return {
        "output_dir": str(result.output_dir),
        "steps": result.global_step,
        "final_loss": round(result.final_loss, 4) if result.final_loss is not None else None,
        "trainable_parameters": result.summary["parameters"]["trainable"],
    }


def _stage_generate(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.generation import generate, load_prompt_plan

    plan = load_prompt_plan(from_dataset=str(ctx.path("prepared")), per_class=ctx.per_class, seed=ctx.seed)
    synthetic = generate(
        str(ctx.path("tiny-sd")), plan, ctx.path("synthetic"), adapter=str(ctx.path("train")),
        scheduler="dpm", steps=10, guidance=4.0, batch_size=8, seed=ctx.seed,
    )
    return {"synthetic": str(synthetic), "images": len(plan.items)}


def _stage_evaluate(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.metrics import evaluate_folders

    prepared = str(ctx.path("prepared"))
    result = evaluate_folders(
        prepared, str(ctx.path("synthetic")), ctx.path("evaluation"), ("xrv_fid", "vendi", "memorisation"),
        allow_random_weights=True,  # no TorchXRayVision weights offline: every number is flagged random_weights
        batch_size=16,
    )
    return {
        "report": result["paths"]["json"],
        "xrv_fid": round(result["xrv_fid"]["score"], 3),
        "vendi": round(result["vendi"]["score"], 3),
        "random_weights": bool(result.get("random_weights", False)),
    }


def _stage_classify(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.downstream import run_experiments

    results = run_experiments(
        str(ctx.path("prepared")), str(ctx.path("synthetic")), ctx.path("classify"), "baseline,synth-50,synth-only",
        label_mode="binary", labels=["Pneumonia"], arch="small-cnn", image_size=ctx.resolution,
        epochs=20, lr=3e-3, batch_size=16, seed=ctx.seed,
    )
    accuracy = {f"{e['name']}_accuracy": round(e["metrics"]["accuracy"], 3) for e in results["experiments"]}
    return {"results": str(ctx.path("classify")), "pretrained": results["pretrained"], **accuracy}


def _stage_export(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.hub import publish

    exported = {}
    for kind, src, extra in (
        ("adapter", ctx.path("train"), {}),
        ("dataset", ctx.path("synthetic"), {"memorisation_report": ctx.path("evaluation") / "report.json"}),
    ):
        result = publish(
            kind, src, f"your-org/cxr-demo-{kind}", license="cc-by-nc-4.0", export_dir=ctx.path("export") / kind,
            dry_run=True, **extra,
        )
        exported[kind] = str(result.export_dir)
    return exported


def _stage_report(ctx: DemoContext) -> dict[str, Any]:
    """One folder a person can look at: sample grid, loss curve, and a summary linking every stage's report."""
    from PIL import Image

    from hf_cxr_diffusion.plots import image_grid

    report = ensure_output_dir(ctx.path("report"))
    samples = sorted((ctx.path("synthetic") / "images").glob("*.png"))
    image_grid([Image.open(p) for p in samples], ncols=ctx.per_class).save(report / "sample_grid.png")
    shutil.copyfile(ctx.path("train") / "loss_curve.png", report / "loss_curve.png")
    lines = [
        "# hf-cxr-diffusion demo", "", f"> {DISCLAIMER}", "",
        "![synthetic samples, one row per class](sample_grid.png)", "", "![LoRA training loss](loss_curve.png)", "",
        "| stage | seconds | outputs |", "|---|---|---|",
    ]
    for stage, info in ctx.results.items():
        outputs = ", ".join(f"{k}={v}" for k, v in info.items() if k != "seconds")
        lines.append(f"| {stage} | {info['seconds']:.1f} | {outputs} |")
    for title, path in (("Metrics", ctx.path("evaluation") / "report.md"), ("Classifier", ctx.path("classify") / "results.md")):
        lines += ["", f"## {title}", "", path.read_text(encoding="utf-8")]
    write_text_atomic(report / "summary.md", "\n".join(lines) + "\n")
    write_json_atomic(report / "summary.json", {"disclaimer": DISCLAIMER, "stages": ctx.results})
    return {"report": str(report), "samples": len(samples)}


STAGES: tuple[tuple[str, Callable[[DemoContext], dict[str, Any]]], ...] = (
    ("model", _stage_model),
    ("corpus", _stage_corpus),
    ("prepare", _stage_prepare),
    ("train", _stage_train),
    ("generate", _stage_generate),
    ("evaluate", _stage_evaluate),
    ("classify", _stage_classify),
    ("export", _stage_export),
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
