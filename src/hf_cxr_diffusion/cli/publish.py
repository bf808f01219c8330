"""``cxr-diffusion publish adapter|model|dataset|metric|space SRC --repo-id ORG/NAME --license ID``."""

from __future__ import annotations

import argparse
from pathlib import Path

KINDS = ("adapter", "model", "dataset", "metric", "space")


HELP = "export a training output, synthetic dataset or metric module as a Hub-ready folder and upload it"
DESCRIPTION = ("Build and validate a Hub-ready folder (only the files that belong, a rendered card), then "
               "create the repo and upload it. --dry-run / --export-dir stop before the upload.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS, help="what SRC holds")
    parser.add_argument("src", type=Path, help="training output folder, dataset folder, or metric module folder")
    needed = parser.add_argument_group("required")  # --help lists both here; a missing --license gets the licence advice
    needed.add_argument("--repo-id", required=True, help="ORG/NAME of the Hub repo")
    needed.add_argument("--license", help="licence ID of the repo (e.g. creativeml-openrail-m, cc-by-nc-4.0)")
    vis = parser.add_mutually_exclusive_group()
    vis.add_argument("--private", dest="private", action="store_true", default=True, help="private repo (default)")
    vis.add_argument("--public", dest="private", action="store_false", help="public repo")
    parser.add_argument("--revision", help="branch to upload to (created if needed)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--export-dir", type=Path, help="write the export here and stop before the upload")
    parser.add_argument("--dry-run", action="store_true", help="build and validate the export, do not upload")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --export-dir")
    parser.add_argument("--training-data", help="training data name or hub id for the card (default: from the run)")
    parser.add_argument("--base-model", help="Hub id (ORG/NAME) of the base model for the card's base_model "
                        "(default: from the run: a hub id, a Hub-cache snapshot path or the pipeline's _name_or_path)")
    parser.add_argument("--adapter-repo", help="space: the published adapter repo the Space loads (default: --repo-id "
                        "without its -demo suffix)")
    parser.add_argument("--prompts-only", action="store_true", help="dataset: publish a prepared folder's prompts, "
                        "labels, splits and corpus-relative paths only (no pixels; users attach their own images)")
    parser.add_argument("--card-template", type=Path, help="Jinja/Markdown card template replacing the default one")
    parser.add_argument("--i-have-redistribution-rights", action="store_true",
                        help="allow real (non-synthetic) images / a prepared corpus; you must hold the rights")
    parser.add_argument("--allow-near-duplicates", action="store_true",
                        help="publish despite images above the memorisation threshold (warns loudly)")
    parser.add_argument("--memorisation-report", type=Path,
                        help="memorisation JSON ({threshold, max_similarity}); default SRC/memorisation.json")


def run(args: argparse.Namespace) -> int:
    from hf_cxr_diffusion.hub import publish

    result = publish(
        args.kind, args.src, args.repo_id, license=args.license, private=args.private, revision=args.revision,
        create_pr=args.create_pr, export_dir=args.export_dir, dry_run=args.dry_run, overwrite=args.overwrite,
        training_data=args.training_data, base_model=args.base_model, prompts_only=args.prompts_only,
        adapter_repo=args.adapter_repo,
        card_template=args.card_template,
        i_have_redistribution_rights=args.i_have_redistribution_rights,
        allow_near_duplicates=args.allow_near_duplicates, memorisation_report=args.memorisation_report,
    )
    if result.upload is None:
        print(f"export ready (not uploaded): {result.export_dir}")
    else:
        print(f"uploaded {len(result.upload.files)} files to {result.upload.url}")
    return 0
