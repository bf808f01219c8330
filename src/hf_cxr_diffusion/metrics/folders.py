"""Evaluate dataset objects and dataset folders: the one call the CLI, the demo and the study make."""

from __future__ import annotations

import logging
import os
from typing import Any

from hf_cxr_diffusion import runs
from hf_cxr_diffusion.artefacts import MEMORISATION_GRID_FILE, REPORT_CHART_FILE, REPORT_FILE, REPORT_MARKDOWN_FILE
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hashing import sha256_json
from hf_cxr_diffusion.metrics.api import evaluate_images
from hf_cxr_diffusion.metrics.catalog import parse_metrics
from hf_cxr_diffusion.data.loading import load_split
from hf_cxr_diffusion.metrics.sources import Column, dataset_labels, is_real_corpus

logger = logging.getLogger(__name__)

#: what evaluate writes into its output folder (the only entries its ``overwrite`` removes)
OWNED_ENTRIES = frozenset({REPORT_FILE, REPORT_MARKDOWN_FILE, REPORT_CHART_FILE, MEMORISATION_GRID_FILE})


def evaluate_datasets(
    real_ds: Any,
    synthetic_ds: Any,
    metrics: Any = ("xrv_fid", "vendi"),
    *,
    image_column: str = "image",
    labels_column: str = "labels",
    prompt_column: str = "prompt",
    training_ds: Any = None,
    grid_path: str | os.PathLike | None = None,
    **options: Any,
) -> dict[str, Any]:
    """:func:`evaluate_images` over ``datasets.Dataset`` objects with ``image`` / ``labels`` columns.

    ``labels`` is the prepared-dataset ``List(ClassLabel)`` of positive findings (each dataset's own
    names are used). Images are decoded row by row (streaming). ``training_ds`` is the generator's
    training split for the memorisation check; ``grid_path`` saves its closest pairs as a PNG.
    ``clip_score`` takes the synthetic prompts from ``prompt_column``.
    """
    for name, ds in (("real", real_ds), ("synthetic", synthetic_ds), ("training", training_ds)):
        if ds is not None and image_column not in ds.column_names:
            raise UserError(f"{name} dataset has no {image_column!r} column (columns: {ds.column_names})")
    if "clip_score" in parse_metrics(metrics) and options.get("prompts_synthetic") is None:
        if prompt_column not in synthetic_ds.column_names:
            raise UserError(
                f"clip_score needs the synthetic dataset's {prompt_column!r} column (columns: {synthetic_ds.column_names})"
            )
        options["prompts_synthetic"] = list(synthetic_ds[prompt_column])
    from hf_cxr_diffusion.metrics.api import to_label_names

    def labels(ds: Any) -> Any:
        ids, names = dataset_labels(ds, labels_column) if ds is not None else (None, None)
        return to_label_names(ids, names, None, labels_column)

    real = Column(real_ds, image_column) if real_ds is not None else None
    synthetic = Column(synthetic_ds, image_column)
    training = Column(training_ds, image_column) if training_ds is not None else None
    result = evaluate_images(real, synthetic, metrics, labels_real=labels(real_ds), labels_synthetic=labels(synthetic_ds),
                             training=training, **options)
    mem = result.get("memorisation")
    if mem is not None and grid_path is not None and mem["top_pairs"]:
        from hf_cxr_diffusion.metrics.memorisation_report import save_pair_grid

        mem["grid"] = str(save_pair_grid(mem["top_pairs"], training if training is not None else real, synthetic, grid_path))
    return result


def evaluate_folders(
    real: str,
    synthetic: str,
    output_dir: str | os.PathLike,
    metrics: Any = ("xrv_fid", "vendi"),
    *,
    split: str = "test",
    synthetic_split: str | None = None,
    training: str | None = None,
    training_split: str = "train",
    max_real: int | None = None,
    max_synthetic: int | None = None,
    data_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Score the ``synthetic`` dataset (folder or hub id) against the ``real`` one and write the report.

    ``real[split]`` is the held-out real set; the memorisation check compares the synthetic images
    with the generator's training images (``training`` or ``real``, split ``training_split``) and
    calibrates its threshold on the held-out set. Writes ``report.json`` / ``.md`` / ``.png`` (and
    the memorisation pair grid) into ``output_dir``; returns the result, whose ``inputs`` say what
    was read. ``data_dir`` joins a prompts-only ``real`` (and ``training``) dataset to the local corpus
    (:func:`hf_cxr_diffusion.data.attach.attach_images`). ``options`` are those of :func:`evaluate_images`.
    ``output_dir`` is claimed through :mod:`hf_cxr_diffusion.runs` (run record + lock): a folder holding another
    evaluation's report is refused naming the differing keys, unless ``overwrite`` (which replaces only the report).
    """
    from hf_cxr_diffusion.io import check_output_location, ensure_output_dir
    from hf_cxr_diffusion.metrics.report import write_report

    names = parse_metrics(metrics, options.get("feature_model", "xrv"))
    if options.get("feature_model", "xrv") == "phantom":
        for spec in (real, training):
            if spec is not None and is_real_corpus(spec):
                logger.warning("%s was prepared from a real corpus: phantom features say nothing about real X-rays; "
                               "use --feature-model xrv", spec)
    out = ensure_output_dir(check_output_location(output_dir, {"--dataset": real, "--synthetic": synthetic, "--training": training,
                                                                 "--data-dir": data_dir}))
    config = {"real": real, "synthetic": synthetic, "metrics": list(names), "split": split, "synthetic_split": synthetic_split,
              "training": training, "training_split": training_split, "max_real": max_real, "max_synthetic": max_synthetic,
              "data_dir": data_dir, **options}
    inputs = sha256_json([runs.input_fingerprint(x) for x in (real, synthetic, training or real)])
    identity = runs.RunIdentity("evaluate", config, inputs, "")
    with runs.OutputLock(out, "evaluate"):  # held until the report is written; refusals come before any work
        runs.claim_output_dir(out, identity, owned=OWNED_ENTRIES.__contains__, overwrite=overwrite, resuming=None,
                              may_change=runs.EVALUATE_RESUMABLE)
        real_ds = load_split(real, split, limit=max_real, data_dir=data_dir)
        synthetic_ds = load_split(synthetic, synthetic_split, limit=max_synthetic)
        training_ds = load_split(training or real, training_split, data_dir=data_dir) if "memorisation" in names else None
        sources = {"real": str(real), "synthetic": str(synthetic), "training": str(training or real)}
        result = evaluate_datasets(real_ds, synthetic_ds, names, training_ds=training_ds,
                                   grid_path=out / MEMORISATION_GRID_FILE, sources=sources, **options)
        result["inputs"] = {
            "real": str(real), "real_split": str(real_ds.split), "synthetic": str(synthetic),
            "synthetic_split": str(synthetic_ds.split),
            **({"training": str(training or real), "training_split": str(training_ds.split)} if training_ds is not None else {}),
        }
        result["paths"] = {k: str(v) for k, v in write_report(result, out).items()}
    return result
