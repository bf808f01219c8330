"""``cxr-diffusion prepare``: a CXR corpus -> Hub-ready dataset folder (parquet shards + card)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_cxr_diffusion.cli._common import add_command, add_output_dir, add_resolution


def add_parser(subparsers) -> None:
    parser = add_command(
        subparsers, "prepare", run, help="prepare a chest X-ray corpus as a Hub-ready dataset folder",
        description="Read a corpus in its real layout, apply the label policy and prompt template, split by "
                    "patient and write parquet shards + a dataset card that datasets.load_dataset(OUT) reads.",
    )
    parser.add_argument("--corpus", required=True, help="chexpert, nih, iu_xray, montgomery, pneumonia, mimic or folder")
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding the corpus as downloaded")
    add_output_dir(parser, help="folder to write the dataset to (outside --data-dir)", deprecated=["--out"])
    parser.add_argument("--template", default=None,
                        help="findings, report, demographic, class or a format string with {findings} {age} {sex} "
                             "{view} {report} {label} (default: the corpus's)")
    parser.add_argument("--uncertain", default="ones", choices=("ones", "zeros", "ignore"),
                        help="uncertain (-1) labels: U-Ones, U-Zeros or U-Ignore (default ones)")
    parser.add_argument("--views", default="frontal", help="comma-separated views to keep: frontal, lateral or all (default frontal)")
    add_resolution(parser, default=512)
    parser.add_argument("--splits", default="auto", choices=("auto", "official", "hash"),
                        help="official split where the corpus has one (auto), required (official) or patient hash only")
    parser.add_argument("--split-fractions", default="0.8,0.1,0.1", help="train,validation,test fractions for hashed splits")
    parser.add_argument("--num-proc", type=int, default=1, help="image decoding processes (default 1)")
    parser.add_argument("--on-missing", default="error", choices=("error", "skip"),
                        help="missing/unreadable images: stop (error) or skip and list them in skipped.csv")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (after the view filter)")
    parser.add_argument("--no-images", action="store_true", help="prompts and labels only (no image files needed)")
    parser.add_argument("--max-shard-rows", type=int, default=1000, help="rows per parquet shard (default 1000)")
    parser.add_argument("--overwrite", action="store_true", help="replace the prepared dataset already in --output-dir")


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.data.prepare import prepare
    from hf_cxr_diffusion.errors import UserError

    try:
        fractions = tuple(float(f) for f in args.split_fractions.split(","))
    except ValueError as err:
        raise UserError(f"--split-fractions {args.split_fractions!r}: expected three numbers like 0.8,0.1,0.1") from err
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    out = prepare(
        args.corpus, args.data_dir, args.output_dir, template=args.template, uncertain=args.uncertain,
        views="all" if views == ["all"] else views, resolution=args.resolution, splits=args.splits,
        split_fractions=fractions, on_missing=args.on_missing, num_proc=args.num_proc, limit=args.limit,
        images=not args.no_images, max_shard_rows=args.max_shard_rows, overwrite=args.overwrite,
    )
    print(out)
    return 0
