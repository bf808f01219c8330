"""``cxr-diffusion demo``: the whole job, offline, on the embedded phantom foundation.

The shipped phantom base pipeline (:mod:`hf_cxr_diffusion.phantoms.base`, which knows phantom
anatomy but no findings vocabulary) is fine-tuned with LoRA on ``Chest X-ray of a subject with
{findings}`` prompts of a phantom corpus drawn from real CheXpert label rows restricted to the demo's
conditions; base and fine-tuned pipelines then generate the same seeds per condition, both are
measured with the phantom feature network (protocol ``phantom-fid-v1``: FID, Vendi, per-condition
class consistency, calibrated memorisation), a classifier is trained on real vs synthetic mixes, the
adapter and the synthetic dataset are exported Hub-ready (no upload), and ``report/`` shows it all.

Every number describes phantoms and the software, never medical image quality.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import ensure_output_dir, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

#: the demo's conditions (the rows of the before/after grid) and the prompt template it fine-tunes on
CONDITIONS = ("No Finding", "Cardiomegaly", "Pleural Effusion")
PROMPT = "Chest X-ray of a subject with {}"
DISCLAIMER = (
    "Demo on the shipped phantom base model and procedural phantoms, measured with the phantom feature "
    "network (protocol phantom-fid-v1): it shows that the software works; its numbers say nothing about medical "
    "image quality."
)
BANNER = "> Feature model: phantom feature network (phantom-fid-v1, shipped weights) — phantom numbers, not medical ones."
#: written first into a demo folder, so a rerun knows it may replace it
MARKER = ".cxr-demo"
MODELS = ("base", "finetuned")
#: the folders a demo run writes (and the only ones a rerun replaces)
FOLDERS = ("corpus", "prepared", "train", "synthetic", "evaluation", "classify", "export", "report")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class DemoConfig:
    """Sizes and recipe of the demo (the defaults run in about five minutes on 2 CPU cores).

    Args:
        seed: seed of the corpus, the fine-tune, the sampling and the classifiers.
        corpus_images: phantom radiographs in the demo corpus (real CheXpert label rows with only the demo's
            findings, balanced over none / Cardiomegaly / Pleural Effusion / both).
        train_steps: LoRA optimizer steps.
        learning_rate: LoRA learning rate (cosine schedule, min-SNR-5 loss weighting of Hang et al. 2023, 10% empty
            captions so classifier-free guidance has a matching unconditional branch).
        rank: LoRA rank (alpha = rank).
        per_condition: generated images per condition and model (base and fine-tuned share the seeds).
        sampler_steps: DPM-Solver++ steps per image.
        guidance: classifier-free guidance scale.
        classifier_epochs: epochs of each real/synthetic classifier.
    """

    seed: int = _f(0, "seed of the corpus, fine-tune, sampling and classifiers")
    corpus_images: int = _f(1200, "phantom radiographs in the demo corpus")
    train_steps: int = _f(1200, "LoRA optimizer steps")
    learning_rate: float = _f(5e-3, "LoRA learning rate")
    rank: int = _f(8, "LoRA rank (alpha = rank)")
    per_condition: int = _f(16, "generated images per condition and model")
    sampler_steps: int = _f(15, "DPM-Solver++ steps per image")
    guidance: float = _f(4.0, "classifier-free guidance scale")
    classifier_epochs: int = _f(12, "epochs of each real/synthetic classifier")

    def __post_init__(self) -> None:
        for name in ("corpus_images", "train_steps", "rank", "per_condition", "sampler_steps", "classifier_epochs"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if not self.learning_rate > 0 or not self.guidance >= 1:
            raise UserError("--learning-rate must be > 0 and --guidance >= 1")


@dataclass
class DemoContext:
    """Paths and results shared between demo stages."""

    out: Path
    config: DemoConfig
    results: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.out / name


def _stage_base(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.phantoms.base import PHANTOM_BASE, read_record

    record = read_record()
    return {"pretrained_model": PHANTOM_BASE, "vae_psnr_db": record["stages"]["vae"]["held_out_psnr_db"],
            "pretraining_steps": record["stages"]["diffusion"]["steps"]}


def _stage_corpus(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.phantoms.corpus import make_phantoms

    cfg = ctx.config
    corpus = make_phantoms(ctx.path("corpus"), layout="chexpert", n=cfg.corpus_images, seed=cfg.seed, resolution=64,
                           findings=CONDITIONS[1:], balance=True)
    return {"corpus": str(corpus), "layout": "chexpert", "images": cfg.corpus_images, "findings": list(CONDITIONS[1:])}


def _stage_prepare(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.data.preparation import prepare

    prepared = prepare(corpus="chexpert", data_dir=ctx.path("corpus"), output_dir=ctx.path("prepared"), resolution=64,
                       template="findings")
    return {"prepared": str(prepared.output_dir), "rows": prepared.info["num_rows"], "skipped": prepared.info["skipped"]}


def _stage_train(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.training import TrainConfig, train

    cfg = ctx.config
    result = train(TrainConfig(
        pretrained_model="phantom-base", dataset=str(ctx.path("prepared")), output_dir=str(ctx.path("train")),
        method="lora", method_config={"rank": cfg.rank, "lora_alpha": cfg.rank}, resolution=64, train_batch_size=8,
        max_train_steps=cfg.train_steps, learning_rate=cfg.learning_rate, lr_scheduler="cosine", lr_warmup_steps=20,
        snr_gamma=5.0, proportion_empty_prompts=0.1,
        checkpointing_steps=max(cfg.train_steps // 2, 1), checkpoints_total_limit=1,
        validation_prompts=[PROMPT.format(c) for c in CONDITIONS], num_validation_inference_steps=cfg.sampler_steps,
        seed=cfg.seed,
    ))
    return {"output_dir": str(result.output_dir), "steps": result.global_step,
            "final_loss": round(result.final_loss, 4) if result.final_loss is not None else None,
            "trainable_parameters": result.summary["parameters"]["trainable"]}


def prompt_plan(per_condition: int):
    """``per_condition`` prompts per demo condition, labelled with it (image i of both models shares seed S + i)."""
    from hf_cxr_diffusion.data.labels import CHEXPERT_LABELS
    from hf_cxr_diffusion.generation.prompts import condition_plan

    return condition_plan(CONDITIONS, per_condition, PROMPT, CHEXPERT_LABELS)


def _stage_generate(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.generation import generate

    cfg = ctx.config
    plan = prompt_plan(cfg.per_condition)
    for model in MODELS:
        generate("phantom-base", plan, ctx.path("synthetic") / model, adapter=str(ctx.path("train")) if model == "finetuned" else None,
                 scheduler="dpm", steps=cfg.sampler_steps, guidance=cfg.guidance, batch_size=8, seed=cfg.seed)
    return {"synthetic": str(ctx.path("synthetic")), "images_per_model": len(plan.items), "models": list(MODELS)}


def _stage_evaluate(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.metrics import evaluate_folders

    info: dict[str, Any] = {}
    for model in MODELS:
        result = evaluate_folders(
            str(ctx.path("prepared")), str(ctx.path("synthetic") / model), ctx.path("evaluation") / model,
            ("fid", "vendi", "class_consistency", "memorisation"), feature_model="phantom", by_condition=True,
            batch_size=64, memorisation_space="pixels",
        )
        info[model] = _headline(result)
    return info


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers the report tables show, with the protocol they came from."""
    consistency = result["class_consistency"]["per_condition"]
    return {
        "report": result["paths"]["json"],
        "protocol": result["phantom_fid"]["protocol"],
        "phantom_fid": round(result["phantom_fid"]["score"], 3),
        "vendi": round(result["vendi"]["score"], 3),
        "class_consistency": {c: round(consistency[c]["rate"], 3) for c in CONDITIONS if c in consistency},
        "memorisation_flagged": result["memorisation"]["n_flagged"],
        "memorisation_space": result["memorisation"]["space"],
        "memorisation_threshold": round(result["memorisation"]["threshold"], 4),
        "random_weights": bool(result.get("random_weights", False)),
    }


def _stage_classify(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.downstream import run_experiments

    cfg = ctx.config
    results = run_experiments(
        str(ctx.path("prepared")), str(ctx.path("synthetic") / "finetuned"), ctx.path("classify"),
        "baseline,synth-50,synth-only", label_mode="multiclass", labels=list(CONDITIONS), arch="small-cnn",
        image_size=64, epochs=cfg.classifier_epochs, lr=3e-3, batch_size=32, seed=cfg.seed,
    )
    accuracy = {f"{e['name']}_accuracy": round(e["metrics"]["accuracy"], 3) for e in results["experiments"]}
    return {"results": str(ctx.path("classify")), "pretrained": results["pretrained"], **accuracy}


def _stage_export(ctx: DemoContext) -> dict[str, Any]:
    from hf_cxr_diffusion.hub import publish

    exported = {}
    for kind, src, extra in (
        ("adapter", ctx.path("train"), {}),
        ("dataset", ctx.path("synthetic") / "finetuned",
         {"memorisation_report": Path(ctx.results["evaluate"]["finetuned"]["report"])}),
    ):
        result = publish(kind, src, f"your-org/cxr-demo-{kind}", license="cc-by-nc-4.0",
                         export_dir=ctx.path("export") / kind, dry_run=True, **extra)
        exported[kind] = str(result.export_dir)
    return exported


def _stage_report(ctx: DemoContext) -> dict[str, Any]:
    """One folder a person can look at: before/after grid, metric table, consistency chart, loss curve, summary."""
    from hf_cxr_diffusion.demo_report import write_demo_report

    return write_demo_report(ctx)


STAGES: tuple[tuple[str, Callable[[DemoContext], dict[str, Any]]], ...] = (
    ("base", _stage_base),
    ("corpus", _stage_corpus),
    ("prepare", _stage_prepare),
    ("train", _stage_train),
    ("generate", _stage_generate),
    ("evaluate", _stage_evaluate),
    ("classify", _stage_classify),
    ("export", _stage_export),
    ("report", _stage_report),
)


def _claim(out: Path, overwrite: bool) -> Path:
    """Create ``out`` for a demo run; replace an earlier demo only (never a folder the demo did not make)."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError(f"{out} exists and is not a demo output folder; pass an empty or new --output-dir")
        if not overwrite:
            raise UserError(f"{out} holds an earlier demo; pass --overwrite to replace it")
        for name in FOLDERS:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
    ensure_output_dir(out)
    write_text_atomic(out / MARKER, "hf-cxr-diffusion demo output; `cxr-diffusion demo --overwrite` may replace it\n")
    return out


def run_demo(output_dir: str | Path, config: DemoConfig | None = None, *, overwrite: bool = False) -> dict[str, Any]:
    """Run every stage into ``output_dir``; return the per-stage summary (also written to ``report/``)."""
    from hf_cxr_diffusion.demo_report import SUMMARY_FILE

    ctx = DemoContext(out=_claim(Path(output_dir), overwrite), config=config or DemoConfig())
    for name, stage in STAGES:
        logger.info("demo stage %s ...", name)
        start = time.perf_counter()
        info = stage(ctx)
        info["seconds"] = round(time.perf_counter() - start, 2)
        ctx.results[name] = info
        logger.info("demo stage %s done in %.1fs", name, info["seconds"])
    write_json_atomic(ctx.path("report") / SUMMARY_FILE, {"disclaimer": DISCLAIMER, "config": vars(ctx.config),
                                                            "stages": ctx.results})
    return ctx.results
