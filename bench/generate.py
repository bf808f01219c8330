"""Benchmark ``generate``: images/s of our seeded, resumable writer vs a bare ``pipe(...)`` loop.

Both sides load the tiny 64 px pipeline (the bare side with diffusers alone), swap in the same scheduler
and draw the same images with one ``torch.Generator`` per image; ours also writes each PNG atomically
with its provenance chunk, then the parquet shards and the dataset card. ``batched`` rows call the pipeline once per batch
(as the bare loop does); the ``per-image`` row is the CPU default (one denoising call per image,
so images are bit-identical whatever the batch size), compared with the bare loop of batch size 1
that makes the same pipeline calls.

``wall ratio`` compares wall times (noisy on a shared box); ``bookkeeping`` is measured inside our
run: time outside pipeline loading and ``pipe(...)`` calls (PNG writes, provenance, parquet, card),
relative to the time inside them.

Second table: the cost per synthetic image of the whole study preset (``configs/study/paradigm-phantom.yaml``:
per method train -> generate -> evaluate -> utility on its base model, phantom-base), run with ``--study-steps``
training steps (the preset's own 150 unless given) and ``--study-phantoms`` phantoms; the stage seconds are the
study's own ``<stage>.complete.json`` records. ``projected`` adds the missing steps at the run's steady-state
seconds per step (the preset's 150 when run with fewer).

Results also go to ``bench/results/generate.json`` (``bench/_results.py``).

Run: ``python bench/generate.py [--images 24] [--steps 4] [--repeats 2] [--study-steps 150] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from hf_cxr_diffusion.generation import generate
from hf_cxr_diffusion.generation import generator as gen_module
from hf_cxr_diffusion.generation.prompts import PromptItem, PromptPlan
from hf_cxr_diffusion.models.tiny import make_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_results  # noqa: E402

STUDY_PRESET = Path(__file__).resolve().parents[1] / "configs" / "study" / "paradigm-phantom.yaml"


def bare_loop(model: Path, plan: PromptPlan, batch_size: int, steps: int, seed: int) -> None:
    """diffusers alone: ``from_pretrained``, the DPM scheduler and ``pipe(...)`` per batch (no library code)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    prompts = [it.prompt for it in plan.items]
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        gens = [torch.Generator("cpu").manual_seed(seed + start + k) for k in range(len(batch))]
        pipe(prompt=batch, num_inference_steps=steps, guidance_scale=4.0, generator=gens, output_type="pil")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class PipeTimer:
    """Seconds spent inside pipeline loading and ``pipe(...)`` calls during one ``generate``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._run, self._build = gen_module._run_pipe, gen_module.build_pipeline
        gen_module._run_pipe = self._wrap(self._run)
        gen_module.build_pipeline = self._wrap(self._build)

    def _wrap(self, fn):
        def inner(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return inner

    def close(self) -> None:
        gen_module._run_pipe, gen_module.build_pipeline = self._run, self._build


def bench_pipeline(model: Path, tmp: Path, images: int, steps: int, repeats: int) -> list[dict]:
    """Our ``generate`` vs the bare pipeline loop, interleaved, best of ``repeats``, per batch size and mode."""
    plan = PromptPlan(
        tuple(PromptItem("chest x-ray, pneumonia" if i % 2 else "chest x-ray, no finding", ("Pneumonia",) if i % 2 else ()) for i in range(images)),
        ("Pneumonia",),
    )  # fmt: skip
    warm = PromptPlan(plan.items[:2], plan.label_names)  # untimed: one-time imports and caches of both paths
    bare_loop(model, warm, 1, steps, 0)
    generate(model, warm, tmp / "warm-up", scheduler="dpm", steps=steps, batch_size=1, seed=0)
    rows = []
    for k, (bs, invariant) in enumerate([(bs, False) for bs in (1, 4, 8)] + [(8, True)]):
        bare, ours, keep = [], [], []
        for r in range(repeats):  # interleaved, best of: the box is shared
            # per-image mode makes the same pipeline calls as a bare loop of batch size 1
            bare.append(timed(lambda: bare_loop(model, plan, 1 if invariant else bs, steps, 0)))
            timer = PipeTimer()
            ours.append(timed(lambda: generate(model, plan, tmp / f"out-{k}-{r}", scheduler="dpm", steps=steps,
                                               batch_size=bs, seed=0, batch_invariant=invariant)))  # fmt: skip
            timer.close()
            keep.append((ours[-1] - timer.seconds) / timer.seconds)
        rows.append({"batch": bs, "mode": "per-image" if invariant else "batched", "bare_images_per_s": images / min(bare),
                     "ours_images_per_s": images / min(ours), "wall_ratio": min(ours) / min(bare), "bookkeeping": min(keep)})
    return rows


def bench_study(tmp: Path, steps: int | None, phantoms: int | None) -> list[dict]:
    """Run the study preset once (optionally fewer steps / phantoms); per run its stage seconds and cost per image."""
    from hf_cxr_diffusion.study import run_study
    from hf_cxr_diffusion.study.config import study_from_dict
    from hf_cxr_diffusion.study.runner import StudyFolder, stages_of

    data = yaml.safe_load(STUDY_PRESET.read_text(encoding="utf-8"))
    preset_steps = data["train"]["max_train_steps"]
    if steps:
        data["train"]["max_train_steps"] = steps
    if phantoms:
        data["phantoms"]["n"] = phantoms
    study = study_from_dict(data, source=f"{STUDY_PRESET.name} (bench: {steps or preset_steps} steps)")
    run_study(study, tmp / "study")
    folder, rows = StudyFolder(tmp / "study"), []
    for run in study.runs():
        seconds = {stage: folder.read_stage(run.name, stage)["seconds"] for stage in stages_of(run)}
        images = folder.read_stage(run.name, "generate")["images"]
        train = seconds.get("train", 0.0)
        per_step = 0.0 if run.is_base else folder.read_stage(run.name, "train")["seconds_per_step"]
        full_train = train + (preset_steps - data["train"]["max_train_steps"]) * per_step  # set-up is paid once
        total = sum(seconds.values())
        rows.append({"run": run.name, "method": run.method, "steps": 0 if run.is_base else data["train"]["max_train_steps"],
                     "images": images, "stage_seconds": seconds, "seconds": total,
                     "seconds_per_image": (train + seconds["generate"] + seconds["evaluate"]) / images,
                     "projected_seconds_per_image": (full_train + seconds["generate"] + seconds["evaluate"]) / images,
                     "projected_seconds": total - train + full_train})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--study-steps", type=int, default=None, help="training steps per method (default: the preset's)")
    parser.add_argument("--study-phantoms", type=int, default=None, help="phantoms in the corpus (default: the preset's)")
    parser.add_argument("--no-study", action="store_true", help="skip the study preset")
    parser.add_argument("--quick", action="store_true", help="bench/all.py's mode: 96 images (pipeline loading "
                        "a small share of each case), best of 3, study at 10 steps, 240 phantoms")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 96, 3
        args.study_steps, args.study_phantoms = args.study_steps or 10, args.study_phantoms or 240
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as folder:
        tmp = Path(folder)
        model = make_tiny_model(tmp / "tiny", seed=0, resolution=64)
        pipeline = bench_pipeline(model, tmp, args.images, args.steps, args.repeats)
        study = [] if args.no_study else bench_study(tmp, args.study_steps, args.study_phantoms)
    load = os.getloadavg()
    print(f"load average {load_before[0]:.2f} -> {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs")
    print(f"\n## generate vs bare diffusers pipeline: tiny model, 64 px, {args.images} images, {args.steps} DPM steps, "
          f"{args.threads} thread(s), best of {args.repeats}\n")
    print("| batch | mode | bare img/s | ours img/s | wall ratio | bookkeeping |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in pipeline:
        print(f"| {r['batch']} | {r['mode']} | {r['bare_images_per_s']:.2f} | {r['ours_images_per_s']:.2f} | "
              f"{r['wall_ratio']:.2f} | {r['bookkeeping']:+.1%} |")
    if study:
        print(f"\n## Study preset {STUDY_PRESET.name} per run ({study[-1]['steps']} training steps; projected: the "
              f"preset's steps)\n")
        print("| run | steps | images | train s | generate s | evaluate s | utility s | s per image | projected s per image |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in study:
            st = r["stage_seconds"]
            print(f"| {r['run']} | {r['steps']} | {r['images']} | {st.get('train', 0):.1f} | {st['generate']:.1f} | "
                  f"{st['evaluate']:.1f} | {st.get('utility', 0):.1f} | {r['seconds_per_image']:.2f} | "
                  f"{r['projected_seconds_per_image']:.2f} |")
        images = sum(r["images"] for r in study)
        print(f"\nwhole preset: {sum(r['seconds'] for r in study):.0f} s for {images} images "
              f"(projected at the preset's steps: {sum(r['projected_seconds'] for r in study):.0f} s)")
    write_results("generate", {"pipeline": pipeline, "study": study, "args": vars(args)}, command=" ".join(sys.argv),
                  load_before=load_before)


if __name__ == "__main__":
    main()
