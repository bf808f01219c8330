"""``cxr-diffusion make-phantoms OUT_DIR``: write a procedural CXR phantom corpus (for exercising the software)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_cxr_diffusion.cli._common import add_resolution, add_seed

HELP = "write procedural chest X-ray phantoms in a real corpus layout (not a medical dataset)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", type=Path, help="folder to write the corpus to")
    parser.add_argument("--layout", default="chexpert", help="on-disk layout: chexpert, nih or pneumonia (default chexpert)")
    parser.add_argument("--n", type=int, default=200, help="number of images over all splits (default 200)")
    parser.add_argument("--findings", type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
                        help="comma list: keep only label rows whose findings all lie in it (chexpert, nih)")
    parser.add_argument("--balance", action="store_true", help="draw finding combinations about equally often (chexpert)")
    add_seed(parser)
    add_resolution(parser, default=256)


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.phantoms.corpus import make_phantoms

    print(make_phantoms(args.output_dir, layout=args.layout, n=args.n, seed=args.seed, resolution=args.resolution,
                        findings=args.findings, balance=args.balance))
    return 0
