"""``export`` builds and validates a Hub-ready folder; ``publish`` exports, then uploads it.

Every publish goes through the same export that ``--dry-run`` / ``--export-dir`` stop at, so
what is uploaded is exactly what was validated on disk.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hub.files import forbidden_files, list_files
from hf_cxr_diffusion.hub.upload import UploadResult, upload_export
from hf_cxr_diffusion.io import atomic_path

logger = logging.getLogger(__name__)

#: publish kind -> Hub repo type
REPO_TYPES: dict[str, str] = {"adapter": "model", "model": "model", "dataset": "dataset", "metric": "space",
                              "space": "space"}
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+\-]*$")


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UserError(f"--repo-id {repo_id!r} is not a valid Hub repo id: {err}") from err
    if repo_id.count("/") != 1:
        raise UserError(
            f"--repo-id {repo_id!r} must be ORG/NAME (your user or organisation name, a slash, the repo name)"
        )
    return repo_id


def check_license(license: str | None) -> str:
    if not license:
        raise UserError(
            "--license is required: choose the licence ID of this repo yourself (e.g. creativeml-openrail-m for "
            "an SD 1.5 adapter, cc-by-nc-4.0, apache-2.0, other); it must respect the base model's and the data's terms"
        )
    if not _LICENSE.match(license):
        raise UserError(f"--license {license!r} is not a Hub licence ID (lower-case letters, digits, '.', '-', '+')")
    return license


def _check_kind(kind: str) -> str:
    if kind not in REPO_TYPES:
        raise UserError(f"unknown publish kind {kind!r}; choose one of {', '.join(REPO_TYPES)}")
    return kind


def _check_export_dir(src: Path, export_dir: Path, overwrite: bool) -> None:
    s, e = src.resolve(), export_dir.resolve()
    if e == s or s in e.parents or e in s.parents:
        raise UserError(f"export folder {export_dir} must be outside the source {src} (and not contain it)")
    if export_dir.exists() and (not export_dir.is_dir() or any(export_dir.iterdir())) and not overwrite:
        raise UserError(f"export folder {export_dir} exists and is not empty; choose another or pass --overwrite")


def export(kind: str, src: str | os.PathLike, export_dir: str | os.PathLike, *, repo_id: str, license: str | None,
           private: bool = True, i_have_redistribution_rights: bool = False, allow_near_duplicates: bool = False,
           report: str | os.PathLike | None = None, memorisation_report: str | os.PathLike | None = None,
           training_data: str | None = None, base_model: str | None = None, prompts_only: bool = False,
           adapter_repo: str | None = None,
           card_template: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Build the Hub-ready folder for ``src`` at ``export_dir`` (atomically), validate it, return its path.

    ``kind`` is ``adapter``, ``model``, ``dataset``, ``metric`` or ``space`` (a Gradio demo of an adapter published
    as ``adapter_repo``). Only the files that belong are
    written; the data-use guard runs for datasets. ``report`` is the ``cxr-diffusion evaluate``
    report shown on the card and in ``model-index`` (default: the one in ``src``, see
    :data:`hf_cxr_diffusion.artefacts.REPORT_LOCATIONS`). ``base_model`` (adapter / model) is the Hub id the
    card links as the base model when the run's own record names none. ``prompts_only`` (dataset) exports the
    prompts config of a prepared folder, no pixels (:mod:`hf_cxr_diffusion.hub.prompts_export`). Nothing is left at ``export_dir`` on error.
    """
    from hf_cxr_diffusion.hub import dataset_export, metric_export, model_export, prompts_export, space_export

    _check_kind(kind)
    check_repo_id(repo_id)
    check_license(license)
    if adapter_repo is not None and kind != "space":
        raise UserError(f"--adapter-repo applies to `publish space`, not to `publish {kind}`")
    if prompts_only and kind != "dataset":
        raise UserError(f"--prompts-only applies to `publish dataset`, not to `publish {kind}`")
    if base_model is not None and kind not in ("adapter", "model", "space"):
        raise UserError(f"--base-model applies to `publish adapter` / `model` / `space`, not to `publish {kind}`")
    src, export_dir = Path(src), Path(export_dir)
    if kind == "metric":  # a module folder, or the name of a shipped one (metrics/<name>)
        from hf_cxr_diffusion.resources import metric_module_dir

        src = metric_module_dir(src)
    if not src.is_dir():
        raise UserError(f"source folder {src} does not exist")
    _check_export_dir(src, export_dir, overwrite)
    template = Path(card_template) if card_template is not None else None
    with atomic_path(export_dir) as tmp:
        tmp.mkdir()
        if kind in ("adapter", "model"):
            model_export.build_model_export(kind, src, tmp, repo_id=repo_id, license=license, training_data=training_data,
                                            report=Path(report) if report else None, card_template=template,
                                            base_model=base_model)
            model_export.validate_model_export(kind, src, tmp)
        elif kind == "dataset" and prompts_only:
            prompts_export.build_prompts_export(src, tmp, repo_id=repo_id, license=license, card_template=template)
            dataset_export.validate_dataset_export(tmp)
        elif kind == "dataset":
            dataset_export.build_dataset_export(
                src, tmp, repo_id=repo_id, license=license, private=private,
                redistribution_rights=i_have_redistribution_rights, allow_near_duplicates=allow_near_duplicates,
                report=Path(report) if report else None,
                memorisation_report=Path(memorisation_report) if memorisation_report else None,
                training_data=training_data, card_template=template,
            )
            dataset_export.validate_dataset_export(tmp)
        elif kind == "space":
            space_export.build_space_export(src, tmp, repo_id=repo_id, license=license, adapter_repo=adapter_repo,
                                            base_model=base_model)
            space_export.validate_space_export(tmp)
        else:
            metric_export.build_metric_export(src, tmp, repo_id=repo_id, license=license, card_template=template)
            metric_export.validate_metric_export(tmp, repo_id)
        bad = forbidden_files(tmp)
        if bad:  # the allow-lists above should make this impossible
            raise UserError(f"export of {src} would contain training state / caches: {', '.join(bad[:5])}")
    logger.info("exported %s (%s, %d files) to %s", src, kind, len(list_files(export_dir)), export_dir)
    if kind == "metric" and export_dir.name != repo_id.split("/")[-1]:
        logger.info("evaluate.load(folder) needs the folder named like the module; load %s instead",
                    export_dir / f"{repo_id.split('/')[-1]}.py")
    return export_dir


@dataclass(frozen=True)
class PublishResult:
    export_dir: Path
    upload: UploadResult | None  # None for --dry-run / --export-dir


def default_export_dir(repo_id: str) -> Path:
    """``./hub-exports/ORG/NAME``: kept after the run, named like the repo (and the metric module)."""
    return Path("hub-exports") / repo_id


def publish(kind: str, src: str | os.PathLike, repo_id: str, *, license: str | None, private: bool = True,
            revision: str | None = None, create_pr: bool = False, export_dir: str | os.PathLike | None = None,
            dry_run: bool = False, token: str | None = None, **export_options) -> PublishResult:
    """Export ``src`` (see :func:`export`), then create the repo and upload the export.

    With ``export_dir`` given or ``dry_run``, stop after the export. Visibility is private unless
    ``private=False``. ``export_options`` are :func:`export`'s keyword options.
    """
    _check_kind(kind)
    check_repo_id(repo_id)
    check_license(license)
    stop = dry_run or export_dir is not None
    target = Path(export_dir) if export_dir is not None else default_export_dir(repo_id)
    export_options["overwrite"] = bool(export_options.get("overwrite")) or export_dir is None
    folder = export(kind, src, target, repo_id=repo_id, license=license, private=private, **export_options)
    if stop:
        reason = "--dry-run" if dry_run else "--export-dir"
        logger.info("stopped before the upload (%s); the export is at %s", reason, folder)
        return PublishResult(folder, None)
    repo_type = REPO_TYPES[kind]
    result = upload_export(folder, repo_id, repo_type, private=private, revision=revision, create_pr=create_pr,
                           token=token, space_sdk="gradio" if repo_type == "space" else None)
    return PublishResult(folder, result)
