"""``cxr-diffusion evaluate``: XRV-FID, Vendi, class consistency, memorisation, CLIP score -> report.json/.md/.png."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_cxr_diffusion.cli._common import add_command


def _dims(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 64,2048, got {text!r}") from err


def add_parser(subparsers) -> None:
    parser = add_command(
        subparsers,
        "evaluate",
        run,
        help="score a synthetic dataset against a real one (XRV-FID, Vendi, class consistency, memorisation)",
    )
    parser.add_argument("--real", required=True, help="real dataset: prepared dataset folder, image folder or hub id")
    parser.add_argument("--synthetic", required=True, help="synthetic dataset: folder written by `generate` or hub id")
    parser.add_argument(
        "--metrics",
        default="xrv_fid,vendi",
        help="comma-separated: xrv_fid, vendi, class_consistency, memorisation, inception_fid, clip_score "
        "(default xrv_fid,vendi)",
    )
    parser.add_argument(
        "--clip-model",
        default=None,
        help="for clip_score: a transformers CLIP model folder or a hub id already in the Hub cache (never downloaded)",
    )
    parser.add_argument("--inception-dims", type=_dims, default=(2048,), help="Inception-FID feature dims, comma-separated from 64,192,768,2048")
    parser.add_argument(
        "--training",
        default=None,
        help="the generator's training dataset for memorisation (default: --real with --training-split)",
    )
    parser.add_argument("--training-split", default="train", help="split of the training dataset (default train)")
    parser.add_argument("--split", default="test", help="split of --real to use (default test)")
    parser.add_argument("--synthetic-split", default=None, help="split of --synthetic (default: its only split)")
    parser.add_argument("--by-condition", action="store_true", help="also report FID/Vendi per label")
    parser.add_argument("--weights", default=None, help="xrv DenseNet weights name (default densenet121-res224-all)")
    parser.add_argument("--weights-path", type=Path, default=None, help="xrv weights file or folder (default ~/.torchxrayvision/models_data)")
    parser.add_argument("--allow-random-weights", action="store_true", help="run with a random DenseNet if the weights are missing (flagged)")
    parser.add_argument("--vendi-q", type=float, default=1.0, help="Vendi order q (default 1; 'inf' allowed)")
    parser.add_argument("--vendi-n", type=int, default=None, help="fixed n per condition for Vendi (default: smallest condition)")
    parser.add_argument("--max-real", type=int, default=None, help="use at most this many real images (first N)")
    parser.add_argument("--max-synthetic", type=int, default=None, help="use at most this many synthetic images (first N)")
    parser.add_argument("--memorisation-threshold", type=float, default=0.95, help="cosine similarity flagged as a copy")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="torch device (default cuda if available)")
    parser.add_argument("--out", type=Path, required=True, help="report JSON path; .md and .png are written next to it")


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.metrics import evaluate_datasets, parse_metrics, write_report
    from hf_cxr_diffusion.data.loading import load_split

    metrics = parse_metrics(args.metrics)
    real = load_split(args.real, args.split, limit=args.max_real)
    synthetic = load_split(args.synthetic, args.synthetic_split, limit=args.max_synthetic)
    training = None
    if "memorisation" in metrics:
        training = load_split(args.training or args.real, args.training_split)
    result = evaluate_datasets(
        real,
        synthetic,
        metrics,
        weights=args.weights,
        weights_path=args.weights_path,
        allow_random_weights=args.allow_random_weights,
        device=args.device,
        batch_size=args.batch_size,
        by_condition=args.by_condition,
        vendi_q=args.vendi_q,
        vendi_n_per_condition=args.vendi_n,
        memorisation_threshold=args.memorisation_threshold,
        grid_path=args.out.with_name(args.out.stem + "_memorisation_pairs.png"),
        training_ds=training,
        inception_dims=args.inception_dims,
        clip_model=args.clip_model,
    )
    result["inputs"] = {
        "real": args.real,
        "real_split": str(real.split),
        "synthetic": args.synthetic,
        "synthetic_split": str(synthetic.split),
        **({"training": args.training or args.real, "training_split": str(training.split)} if training is not None else {}),
    }
    for path in write_report(result, args.out).values():
        print(path)
    return 0
