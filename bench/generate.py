"""Benchmark ``generate``: images/s of our seeded, resumable writer vs a bare ``pipe(...)`` loop.

Both sides load the tiny 64 px pipeline, swap in the same scheduler and draw the same images with
one ``torch.Generator`` per image; ours also writes each PNG atomically with its provenance chunk,
then the parquet shards and the dataset card. ``batched`` rows call the pipeline once per batch
(as the bare loop does); the ``per-image`` row is the CPU default (one denoising call per image,
so images are bit-identical whatever the batch size), compared with the bare loop of batch size 1
that makes the same pipeline calls.

``wall ratio`` compares wall times (noisy on a shared box); ``bookkeeping`` is measured inside our
run: time outside pipeline loading and ``pipe(...)`` calls (PNG writes, provenance, parquet, card),
relative to the time inside them.

Run: ``python bench/generate.py [--images 24] [--steps 4] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from hf_cxr_diffusion.generation import generate
from hf_cxr_diffusion.generation import generator as gen_module
from hf_cxr_diffusion.generation.generator import build_pipeline
from hf_cxr_diffusion.generation.prompts import PromptItem, PromptPlan
from hf_cxr_diffusion.models.tiny import make_tiny_model


def bare_loop(model: Path, plan: PromptPlan, batch_size: int, steps: int, seed: int) -> None:
    pipe = build_pipeline(model, None, "dpm", torch.float32, "cpu")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    model = make_tiny_model(tmp / "tiny", seed=0, resolution=64)
    plan = PromptPlan(
        tuple(PromptItem("chest x-ray, pneumonia" if i % 2 else "chest x-ray, no finding", ("Pneumonia",) if i % 2 else ()) for i in range(args.images)),
        ("Pneumonia",),
    )  # fmt: skip
    runs = [(bs, False) for bs in (1, 4, 8)] + [(8, True)]
    print(f"tiny model, 64 px, {args.images} images, {args.steps} DPM steps, {args.threads} thread(s), best of {args.repeats}")
    print(f"{'batch':>5} {'mode':>9} {'bare img/s':>11} {'ours img/s':>11} {'wall ratio':>10} {'bookkeeping':>12}")
    for k, (bs, invariant) in enumerate(runs):
        bare, ours, keep = [], [], []
        for r in range(args.repeats):  # interleaved, best of: the box is shared
            # per-image mode makes the same pipeline calls as a bare loop of batch size 1
            bare.append(timed(lambda: bare_loop(model, plan, 1 if invariant else bs, args.steps, 0)))
            timer = PipeTimer()
            ours.append(timed(lambda: generate(model, plan, tmp / f"out-{k}-{r}", scheduler="dpm", steps=args.steps,
                                               batch_size=bs, seed=0, batch_invariant=invariant)))  # fmt: skip
            timer.close()
            keep.append((ours[-1] - timer.seconds) / timer.seconds)
        mode = "per-image" if invariant else "batched"
        print(f"{bs:>5} {mode:>9} {args.images / min(bare):>11.2f} {args.images / min(ours):>11.2f} "
              f"{min(ours) / min(bare):>10.2f} {min(keep):>+12.1%}")


if __name__ == "__main__":
    main()
