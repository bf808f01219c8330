"""``cxr-diffusion evaluate``: FID, Vendi, class consistency, memorisation, CLIP score -> report.json/.md/.png."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from hf_cxr_diffusion.cli._common import add_dataset, add_output_dir


def _dims(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 64,2048, got {text!r}") from err


def _order(text: str) -> float:
    try:
        q = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number > 0 or inf, got {text!r}") from err
    if math.isnan(q) or q <= 0:
        raise argparse.ArgumentTypeError(f"Vendi order must be > 0 (or inf), got {text!r}")
    return q


HELP = ("score a synthetic dataset against a real one (FID, Vendi, class consistency, memorisation) and write "
        "report.json/.md/.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset(parser, help="the real dataset: prepared dataset folder, image folder or hub id", deprecated=["--real"])
    parser.add_argument("--synthetic", required=True, help="synthetic dataset: folder written by `generate` or hub id")
    parser.add_argument("--metrics", default="fid,vendi", help="comma-separated: fid (reported as <feature model>_fid; "
                        "xrv_fid/phantom_fid name the model), vendi, class_consistency, memorisation, inception_fid, "
                        "clip_score (default fid,vendi)")
    parser.add_argument("--feature-model", default="xrv", help="features for every metric: xrv (TorchXRayVision "
                        "DenseNet-121, default) or phantom (the phantom feature network; phantom numbers only)")
    parser.add_argument("--protocol", default=None, help="preprocessing protocol id (default: xrv-fid-v2 for xrv, "
                        "phantom-fid-v1 for phantom; xrv-fid-v1 for continuity with old reports)")
    parser.add_argument("--clip-model", default=None, help="for clip_score: a transformers CLIP model folder or a hub id "
                        "already in the Hub cache (never downloaded)")
    parser.add_argument("--inception-dims", type=_dims, default=(2048,), help="Inception-FID dims, from 64,192,768,2048")
    parser.add_argument("--training", default=None, help="the generator's training dataset for memorisation "
                        "(default: --dataset with --training-split)")
    parser.add_argument("--data-dir", type=Path, default=None, help="with a prompts-only --dataset: your local copy "
                        "of the corpus, joined to each row by its source_path")
    parser.add_argument("--training-split", default="train", help="split of the training dataset (default train)")
    parser.add_argument("--split", default="test", help="split of --dataset to use: the held-out real images (default test)")
    parser.add_argument("--synthetic-split", default=None, help="split of --synthetic (default: its only split)")
    parser.add_argument("--by-condition", action="store_true", help="also report FID/Vendi per label")
    parser.add_argument("--weights", default=None, help="xrv DenseNet weights name (default densenet121-res224-all)")
    parser.add_argument("--weights-path", type=Path, default=None, help="xrv weights file or folder (default "
                        "~/.torchxrayvision/models_data), or the phantom network's folder")
    parser.add_argument("--allow-random-weights", action="store_true", help="run with a random network if the weights "
                        "are missing (every result flagged)")
    parser.add_argument("--vendi-q", type=_order, default=1.0, help="Vendi order q > 0 (default 1; inf = 1 / max eigenvalue)")
    parser.add_argument("--vendi-n", type=int, default=None, help="fixed n per condition for Vendi (default: smallest condition)")
    parser.add_argument("--max-real", type=int, default=None, help="use at most this many real images (first N)")
    parser.add_argument("--max-synthetic", type=int, default=None, help="use at most this many synthetic images (first N)")
    parser.add_argument("--memorisation-threshold", type=float, default=None, help="a fixed cosine similarity flagged as "
                        "a copy (default: calibrated on the held-out real images, see --memorisation-percentile)")
    parser.add_argument("--memorisation-space", choices=("features", "pixels"), default="features",
                        help="look for copies of training images in the feature model's features or in 16x16 "
                        "downsampled pixels (pixels: for small latent models whose VAE loses texture; default features)")
    parser.add_argument("--memorisation-percentile", type=float, default=99.0, help="calibrated threshold: this percentile "
                        "of held-out real images' nearest-training similarity (default 99)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="torch device (default cuda if available)")
    add_output_dir(parser, help="folder for report.json, report.md, report.png and the memorisation pair grid",
                   deprecated=["--out"])
    parser.add_argument("--overwrite", action="store_true", help="replace the report of a different evaluation in --output-dir")


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.metrics import evaluate_folders

    output_dir = args.output_dir.parent if args.output_dir.suffix == ".json" else args.output_dir  # old --out report.json
    result = evaluate_folders(
        args.dataset, args.synthetic, output_dir, args.metrics, split=args.split, synthetic_split=args.synthetic_split,
        training=args.training, training_split=args.training_split, max_real=args.max_real, data_dir=args.data_dir,
        max_synthetic=args.max_synthetic, feature_model=args.feature_model, protocol=args.protocol, weights=args.weights,
        weights_path=args.weights_path, allow_random_weights=args.allow_random_weights, device=args.device,
        batch_size=args.batch_size, by_condition=args.by_condition, vendi_q=args.vendi_q,
        vendi_n_per_condition=args.vendi_n, memorisation_threshold=args.memorisation_threshold,
        memorisation_percentile=args.memorisation_percentile, memorisation_space=args.memorisation_space, inception_dims=args.inception_dims,
        clip_model=args.clip_model, overwrite=args.overwrite,
    )
    for path in result["paths"].values():
        print(path)
    return 0
