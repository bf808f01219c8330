"""``cxr-diffusion generate``: a seeded, resumable synthetic dataset folder from a (fine-tuned) pipeline.

Example::

    cxr-diffusion generate --pretrained-model runwayml/stable-diffusion-v1-5 --adapter runs/lora \\
        --dataset data/pneumonia --per-class 1200 --scheduler dpm --steps 50 --guidance 4.0 \\
        --batch-size 8 --seed 0 --output-dir synthetic/pneumonia

Shard across GPUs with ``accelerate launch --multi_gpu $(which cxr-diffusion) generate ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_cxr_diffusion.cli._common import add_deprecated_alias, add_output_dir, add_pretrained_model, add_seed, print_once


HELP = "generate a synthetic dataset folder (seeded, resumable, sharded)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hf_cxr_diffusion.generation.generator import DTYPES
    from hf_cxr_diffusion.models.pipeline import SCHEDULERS

    add_pretrained_model(parser)
    parser.add_argument("--adapter", type=Path, help="training output folder (LoRA/DoRA/SeLoRA, BitFit/DiffFit or full fine-tune)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts-file", type=Path, help="one prompt per line (.txt) or {prompt, labels} per line (.jsonl)")
    source.add_argument("--dataset", help="prepared dataset folder or hub id: --per-class prompts per class from its rows")
    add_deprecated_alias(source, "--from-dataset", "--dataset", "dataset")
    source.add_argument("--labels-csv", type=Path, help="CSV with columns prompt, labels ('|'-separated), count")
    parser.add_argument("--per-class", type=int, help="images per class with --dataset")
    parser.add_argument("--split", default="train", help="split of --dataset to take prompts from (default train)")
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="dpm", help="sampler (default dpm: DPM-Solver multistep)")
    parser.add_argument("--steps", type=int, default=50, help="inference steps (default 50)")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (default 4.0)")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt for every image")
    parser.add_argument("--batch-size", type=int, default=8, help="images per pipeline call (default 8)")
    parser.add_argument("--resolution", type=int, default=None, help="image side (default: the model's)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32",
                        help="weights dtype on CUDA (auto: bf16 where supported, else fp16); CPU always fp32")
    parser.add_argument("--torch-compile", action="store_true",
                        help="compile the U-Net with torch.compile (pays on long CUDA runs; the first batch is slower)")
    add_seed(parser)
    add_output_dir(parser, help="synthetic dataset folder to write (resumed when it holds this generation)", deprecated=["--out"])
    parser.add_argument("--overwrite", action="store_true", help="replace images made with other parameters")


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.generation import generate, load_prompt_plan

    plan = load_prompt_plan(
        prompts_file=args.prompts_file, dataset=args.dataset, per_class=args.per_class,
        labels_csv=args.labels_csv, split=args.split, seed=args.seed,
    )  # fmt: skip
    out = generate(
        args.pretrained_model, plan, args.output_dir, adapter=args.adapter, scheduler=args.scheduler, steps=args.steps,
        guidance=args.guidance, negative_prompt=args.negative_prompt, batch_size=args.batch_size, seed=args.seed,
        resolution=args.resolution, dtype=args.dtype, overwrite=args.overwrite,
        torch_compile=args.torch_compile,
    )  # fmt: skip
    print_once(str(out))
    return 0
