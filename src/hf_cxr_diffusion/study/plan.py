"""``cxr-diffusion study --plan``: the job list, with what each run trains and costs, before anything runs.

Trainable parameters come from applying each run's method to the base pipeline built on the ``meta``
device from its configuration (:mod:`hf_cxr_diffusion.models.meta`; no weights read). Optimizer memory
is the fp32 weights + gradients + two AdamW moments of the trainable parameters (16 bytes each),
activations excluded; SeLoRA is counted at its starting rank.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hf_cxr_diffusion.study.config import Run, StudyConfig

#: fp32 weight + gradient + AdamW exp_avg + exp_avg_sq per trainable parameter
OPTIMIZER_BYTES_PER_PARAMETER = 16


@dataclasses.dataclass
class Job:
    """One run of the plan: its method, what trains, and the images it generates and scores."""

    run: Run
    method: str
    method_config: dict[str, Any]
    trainable_parameters: int
    total_parameters: int
    optimizer_memory_mib: float
    images_to_generate: int
    images_to_score: int

    def row(self) -> dict[str, Any]:
        return {"run": self.run.name, "method": self.method, "seed": self.run.seed,
                "trainable_parameters": self.trainable_parameters,
                "trainable_percent": round(100 * self.trainable_parameters / self.total_parameters, 4),
                "optimizer_memory_mib": round(self.optimizer_memory_mib, 1),
                "images_to_generate": self.images_to_generate, "images_to_score": self.images_to_score}


def _count(base_model: str, method: str, method_config: dict[str, Any], total_steps: int) -> tuple[int, int]:
    from hf_cxr_diffusion.methods import get_method
    from hf_cxr_diffusion.methods.base import count_parameters
    from hf_cxr_diffusion.models.meta import meta_components

    components = meta_components(base_model)
    if method == "none":
        return 0, count_parameters(components)[1]
    instance = get_method(method, method_config)
    instance.apply(components)
    instance.begin_training(total_steps)
    return count_parameters(components)


def plan_study(study: StudyConfig, runs: list[Run] | None = None) -> list[Job]:
    """The :class:`Job` of every run in ``runs`` (default: all of the study's)."""
    per_run = study.generation.per_condition * len(study.conditions)
    jobs = []
    for run in runs if runs is not None else study.runs():
        if run.is_base:
            method, method_config, steps = "none", {}, 1
        else:
            cfg = study.train_config(run, dataset=study.dataset or "phantoms", output_dir="plan")
            method, method_config, steps = cfg.method, cfg.method_config, cfg.max_train_steps or 1
        trainable, total = _count(study.base_model, method, method_config, steps)
        jobs.append(Job(run, method, method_config, trainable, total, trainable * OPTIMIZER_BYTES_PER_PARAMETER / 2**20,
                        per_run, per_run))
    return jobs


def format_plan(study: StudyConfig, jobs: list[Job]) -> str:
    """The plan as a Markdown table with totals."""
    lines = [f"Study {study.name} ({study.source}): {len(jobs)} run(s) on {study.base_model}, conditions "
             f"{', '.join(study.conditions)}", "",
             "| run | method | seed | trainable params | % of model | fp32 optimizer memory (MiB) | images to generate | images to score |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for job in jobs:
        r = job.row()
        lines.append(f"| {r['run']} | {r['method']} | {r['seed']} | {r['trainable_parameters']:,} | {r['trainable_percent']} | "
                     f"{r['optimizer_memory_mib']} | {r['images_to_generate']} | {r['images_to_score']} |")
    lines.append(f"\nTotal: {sum(j.images_to_generate for j in jobs)} images to generate and score.")
    return "\n".join(lines) + "\n"
