"""``cxr-diffusion study``: train, sample, score and tabulate every method of a study file.

Examples::

    cxr-diffusion study --config configs/study/paradigm-phantom.yaml --output-dir study --plan
    cxr-diffusion study --config configs/study/paradigm-phantom.yaml --output-dir study
    cxr-diffusion study --config STUDY.yaml --output-dir study --shard $SLURM_ARRAY_TASK_ID/8   # one job per shard
    cxr-diffusion study --collect study                                                       # merge what is complete
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_cxr_diffusion.cli._common import add_deprecated_alias, print_once
from hf_cxr_diffusion.errors import UserError


HELP = "a whole fine-tuning study: train, generate, evaluate, classify, tabulate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="study file (YAML; see configs/study/)")
    parser.add_argument("--output-dir", type=Path, dest="output_dir", help="study folder (resumed when it holds this study)")
    add_deprecated_alias(parser, "--out", "--output-dir", "output_dir", type=Path)
    parser.add_argument("--only", help="comma-separated run or method names to run (e.g. lora,dora)")
    parser.add_argument("--shard", help="run shard I/N of the (selected) runs, e.g. 1/4 (one job per shard)")
    parser.add_argument("--collect", type=Path, metavar="DIR", help="merge the complete runs of study folder DIR and exit")
    parser.add_argument("--plan", action="store_true", help="print the job list with trainable parameters and exit")
    parser.add_argument("--overwrite", action="store_true", help="replace a study folder made by a different study file")


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.study import collect_study, format_plan, load_study, plan_study, run_study
    from hf_cxr_diffusion.study.runner import parse_shard, select_runs

    if args.collect is not None:
        for name, path in collect_study(args.collect).items():
            print(f"{name}: {path}")
        return 0
    if args.config is None:
        raise UserError("--config STUDY.yaml is required (or --collect DIR)")
    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    if args.plan:
        study = load_study(args.config)
        shard = parse_shard(args.shard) if args.shard else None
        print(format_plan(study, plan_study(study, select_runs(study.runs(), only=only, shard=shard))), end="")
        return 0
    if args.output_dir is None:
        raise UserError("--output-dir DIR is required")
    result = run_study(args.config, args.output_dir, only=only, shard=args.shard, overwrite=args.overwrite)
    lines = [f"{name}: {', '.join(stages) or 'already complete'}" for name, stages in result["runs"].items()]
    if result["collected"]:
        lines += [f"tables: {result['collected']['tables']}", f"report: {result['collected']['report']}"]
    print_once("\n".join(lines))
    return 0
