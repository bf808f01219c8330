"""``run_experiments``: the real-vs-synthetic classifier study in one call.

Following the DreamBooth/DenseNet synthetic chest X-ray study: one classifier per mix (Baseline,
Synth-25/50/100, Limited-10/25, Synth-Only or custom ``real=R%,synthetic=S%``), all validated on
the same real validation split and tested on the same held-out real test split.

Output folder::

    OUT/results.json, OUT/results.md, OUT/accuracy_comparison.png, training_curves.png, confusion_matrices.png
    OUT/splits.json                      which real/synthetic rows each experiment trained on
    OUT/<experiment>/predictions.csv     per real test image: truth, prediction, probabilities
    OUT/<experiment>/model.safetensors   best-epoch weights
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from hf_cxr_diffusion.downstream.classifier import ARCHS
from hf_cxr_diffusion.downstream.data import Pool, Pools, load_pools
from hf_cxr_diffusion.downstream.mixes import DEFAULT_EXPERIMENTS, Mix, MixSelection, parse_experiments, select_mix
from hf_cxr_diffusion.downstream.report import PREDICTIONS_CSV, predictions_frame, write_csv_atomic, write_report
from hf_cxr_diffusion.downstream.train import TrainConfig, train_classifier
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import atomic_path, ensure_output_dir, write_json_atomic

logger = logging.getLogger(__name__)


def _concat(parts: Sequence[Pool], name: str) -> Pool:
    return Pool(
        name,
        torch.cat([p.images for p in parts]),
        torch.cat([p.targets for p in parts]),
        [x for p in parts for x in p.patients],
        [x for p in parts for x in p.rows],
        0,
        [x for p in parts for x in p.strata],
    )


def training_set(pools: Pools, selection: MixSelection) -> Pool:
    """The real and synthetic images of one experiment, as one pool."""
    parts = [pools.train.subset(selection.real)]
    if selection.synthetic:
        assert pools.synthetic is not None
        parts.append(pools.synthetic.subset(selection.synthetic))
    return _concat(parts, selection.mix.name)


def plan_mixes(pools: Pools, mixes: Sequence[Mix], seed: int) -> list[MixSelection]:
    """Select every experiment's items up front, so a bad mix fails before any training."""
    if any(m.synthetic > 0 for m in mixes) and (pools.synthetic is None or len(pools.synthetic) == 0):
        raise UserError("experiments with synthetic data need --synthetic DATASET (with images of the chosen labels)")
    synth_strata = pools.synthetic.strata if pools.synthetic is not None else []
    required = sorted(set(pools.train.strata) | set(pools.test.strata), key=str)
    if pools.space.mode == "multilabel":
        required = []  # label combinations need not all appear; every label is learnt from its own column
    return [select_mix(m, pools.train.strata, synth_strata, seed, required=required or None) for m in mixes]


def run_experiments(
    real: str | Path | Any,
    synthetic: str | Path | Any | None,
    out: str | Path,
    experiments: str | Sequence[str] = DEFAULT_EXPERIMENTS,
    *,
    label_mode: str = "binary",
    labels: Sequence[str] | None = None,
    config: TrainConfig | None = None,
    **config_overrides: Any,
) -> dict[str, Any]:
    """Train one classifier per experiment and write the report to ``out``; return the results dict.

    ``real`` / ``synthetic`` are dataset folders, hub ids or ``DatasetDict`` objects with ``image``
    and ``labels``; ``config_overrides`` set :class:`TrainConfig` fields (``epochs=3, arch="small-cnn"``).
    """
    cfg = replace(config or TrainConfig(), **config_overrides)
    if cfg.arch not in ARCHS:
        raise UserError(f"--arch {cfg.arch!r} is not one of {', '.join(ARCHS)}")
    mixes = parse_experiments(experiments)
    out = ensure_output_dir(out)
    pools = load_pools(real, synthetic, (label_mode, labels), cfg.image_size, seed=cfg.seed)
    selections = plan_mixes(pools, mixes, cfg.seed)
    if len(pools.test) == 0 or len(pools.validation) == 0:
        raise UserError("the real test and validation splits must not be empty")
    space = pools.space
    results: dict[str, Any] = {
        "config": cfg.to_dict(),
        "label_mode": space.mode,
        "labels": list(space.labels),
        "class_names": list(space.class_names),
        "selection_metric": "validation macro AUC" if space.mode == "multilabel" else "validation accuracy",
        "counts": {
            "real_train": len(pools.train),
            "validation": len(pools.validation),
            "test": len(pools.test),
            "synthetic_pool": len(pools.synthetic) if pools.synthetic is not None else 0,
            "skipped_rows": {p.name: p.skipped for p in (pools.train, pools.validation, pools.test, pools.synthetic) if p is not None and p.skipped},
            "test_dropped_patient_overlap": pools.test_dropped_patient_overlap,
        },
        "experiments": [],
    }
    splits: dict[str, Any] = {"test_rows": pools.test.rows, "validation_rows": pools.validation.rows}
    pretrained = []
    for sel in selections:
        train = training_set(pools, sel)
        logger.info("%s: %s -> %d real + %d synthetic images", sel.mix.name, sel.mix.describe(), len(sel.real), len(sel.synthetic))
        result = train_classifier(train, pools.validation, pools.test, space, cfg, label=sel.mix.name)
        pretrained.append(result.pretrained)
        folder = out / sel.mix.name
        folder.mkdir(exist_ok=True)
        write_csv_atomic(folder / PREDICTIONS_CSV, predictions_frame(pools.test, result.test_targets, result.test_probs, space))
        _save_weights(result.state_dict, folder / "model.safetensors")
        splits[sel.mix.name] = {"real_train_rows": [pools.train.rows[i] for i in sel.real], "synthetic_rows": [pools.synthetic.rows[i] for i in sel.synthetic] if sel.synthetic else []}
        results["experiments"].append(
            {
                "name": sel.mix.name,
                "real_fraction": float(sel.mix.real),
                "synthetic_fraction": float(sel.mix.synthetic),
                "n_real": len(sel.real),
                "n_synthetic": len(sel.synthetic),
                "total": sel.total,
                "per_class": {str(k): v for k, v in sorted(Counter(map(str, train.strata)).items())},
                "pretrained": result.pretrained,
                "best_epoch": result.best_epoch,
                "history": result.history,
                "metrics": result.test_metrics,
            }
        )
    results["pretrained"] = all(pretrained)
    write_json_atomic(out / "splits.json", splits)
    write_report(results, out)
    logger.info("classifier results in %s", out)
    return results


def _save_weights(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp))
