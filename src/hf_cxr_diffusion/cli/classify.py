"""``cxr-diffusion classify``: train classifiers on real/synthetic mixes, test them on real images.

Example (the DreamBooth/DenseNet study's seven experiments)::

    cxr-diffusion classify --dataset data/pneumonia --synthetic synthetic/pneumonia \\
        --experiments baseline,synth-25,synth-50,synth-100,limited-10,limited-25,synth-only \\
        --labels Pneumonia --output-dir results/classify
"""

from __future__ import annotations

import argparse

from hf_cxr_diffusion.cli._common import add_dataset, add_output_dir, add_seed


HELP = "real-vs-synthetic classifier experiments (DenseNet-121)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hf_cxr_diffusion.downstream.mixes import DEFAULT_EXPERIMENTS

    add_dataset(parser, help="prepared real dataset (folder or hub id) with train/test splits", deprecated=["--real"])
    parser.add_argument("--synthetic", help="synthetic dataset folder or hub id (from `cxr-diffusion generate`)")
    parser.add_argument(
        "--experiments", default=DEFAULT_EXPERIMENTS,
        help=f"comma-separated mixes and/or real=R%%,synthetic=S%% pairs (default {DEFAULT_EXPERIMENTS})",
    )  # fmt: skip
    parser.add_argument("--label-mode", default="binary", help="binary (default), multiclass or multilabel")
    parser.add_argument("--labels", nargs="+", help="label(s) to classify (binary: one, e.g. Pneumonia)")
    parser.add_argument("--arch", default="densenet121", help="densenet121 (default) or small-cnn (fast CPU demos)")
    parser.add_argument("--epochs", type=int, default=20, help="default 20")
    parser.add_argument("--batch-size", type=int, default=64, help="default 64 (the study used 512 on an A100)")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate, cosine annealed (default 1e-4)")
    parser.add_argument("--image-size", type=int, default=224, help="input side in pixels (default 224)")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no", help="CUDA autocast")
    parser.add_argument("--no-pretrained", action="store_true", help="never load ImageNet weights")
    add_seed(parser)
    add_output_dir(parser, help="folder for the experiments' results", deprecated=["--out"])


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.downstream import TrainConfig, run_experiments
    from hf_cxr_diffusion.downstream.report import RESULTS_MD

    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, image_size=args.image_size, arch=args.arch,
        pretrained=not args.no_pretrained, seed=args.seed, mixed_precision=args.mixed_precision,
    )  # fmt: skip
    run_experiments(args.dataset, args.synthetic, args.output_dir, args.experiments, label_mode=args.label_mode, labels=args.labels, config=config)
    print((args.output_dir / RESULTS_MD).read_text(encoding="utf-8"))
    return 0
