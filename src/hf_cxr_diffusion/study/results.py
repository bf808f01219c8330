"""A study's results: one row per run x condition, from the numbers each complete stage recorded.

``results.json`` and ``results.parquet`` hold the same rows: FID, Vendi (global and of the condition),
class consistency and utility accuracy of the condition, trainable parameters, train wall time, s/step,
peak memory (``torch.cuda.max_memory_allocated`` on GPU, peak RSS on CPU), the protocol and feature
weights, the seed and the git revision. ``tables.md`` and ``report.md`` are built from these rows only,
so each of their numbers can be found in ``results.json``.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import atomic_path, write_json_atomic
from hf_cxr_diffusion.study.runner import StudyFolder

logger = logging.getLogger(__name__)

RESULTS_JSON = "results.json"
RESULTS_PARQUET = "results.parquet"
TABLES_MD = "tables.md"
REPORT_MD = "report.md"
FIGURES_DIR = "figures"
#: everything :func:`collect_study` writes into a study folder
OUTPUTS = (RESULTS_JSON, RESULTS_PARQUET, TABLES_MD, REPORT_MD, FIGURES_DIR)


def headline(result: dict[str, Any], conditions: list[str], study_dir: Path) -> dict[str, Any]:
    """The numbers of an ``evaluate_folders`` result that the study tabulates, with their protocol.

    The report's path is relative to ``study_dir``, so a study folder stays valid when moved or shared.
    """
    fid_key = f"{result['feature_model']}_fid"
    consistency = (result.get("class_consistency") or {}).get("per_condition") or {}
    by_condition = result.get("by_condition") or {}
    report = Path(result["paths"]["json"]).resolve().relative_to(Path(study_dir).resolve())
    out: dict[str, Any] = {
        "report": report.as_posix(), "protocol": result["protocol"], "feature_model": result["feature_model"],
        "feature_weights_sha256": result.get("weights_sha256"), "random_weights": bool(result.get("random_weights", False)),
        "fid_metric": fid_key, "fid": (result.get(fid_key) or {}).get("score"), "vendi": (result.get("vendi") or {}).get("score"),
        "per_condition": {c: {"fid": by_condition.get(c, {}).get(fid_key), "vendi": by_condition.get(c, {}).get("vendi"),
                              "class_consistency": consistency.get(c, {}).get("rate")} for c in conditions},
    }
    if "inception_fid" in result:
        out["inception_fid"] = result["inception_fid"].get("scores")
    if "clip_score" in result:
        out["clip_score"] = result["clip_score"].get("score")
    return out


def utility_accuracy(results: dict[str, Any], output_dir: Path, conditions: list[str]) -> dict[str, Any]:
    """Per condition, the one-vs-rest accuracy on the real test images of each experiment's classifier
    (the paradigm paper's Table 4), and the rate of always answering the majority for that condition."""
    from hf_cxr_diffusion.downstream.report import PREDICTIONS_CSV

    names = list(results["class_names"])
    out: dict[str, Any] = {"label_mode": results["label_mode"], "experiments": {}}
    for experiment in results["experiments"]:
        frame = pd.read_csv(Path(output_dir) / experiment["name"] / PREDICTIONS_CSV)
        per: dict[str, Any] = {}
        for c in conditions:
            if results["label_mode"] == "multilabel":
                truth, pred = frame[f"true_{c}"].to_numpy() == 1, frame[f"pred_{c}"].to_numpy() == 1
            else:
                truth, pred = frame["y_true"].to_numpy() == names.index(c), frame["y_pred"].to_numpy() == names.index(c)
            per[c] = {"accuracy": float(np.mean(truth == pred)), "majority_rate": float(max(truth.mean(), 1 - truth.mean())),
                      "n_test": int(len(frame))}
        out["experiments"][experiment["name"]] = {"overall_accuracy": experiment["metrics"]["accuracy"], "per_condition": per}
    return out


def git_revision() -> str | None:
    """``git describe --always --dirty`` of the package's checkout, or None outside one."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _variant(record: dict[str, Any]) -> str:
    """The run's name without its seed: what the tables average over seeds."""
    suffix = f"-s{record['seed']}"
    return record["name"][: -len(suffix)] if len(record.get("seeds_in_study", [])) > 1 and record["name"].endswith(suffix) else record["name"]


def run_rows(folder: StudyFolder, record: dict[str, Any], conditions: list[str], revision: str | None) -> list[dict[str, Any]] | None:
    """The rows of one run (one per condition), or None when one of its stages is not complete."""
    stages = {s: folder.read_stage(record["name"], s) for s in ("train", "generate", "evaluate", "utility")}
    needed = ["generate", "evaluate"] + ([] if record["base"] else ["train"]) + (["utility"] if record["utility"] else [])
    if any(stages[s] is None for s in needed):
        return None
    train, evaluation, utility = stages["train"] or {}, stages["evaluate"], stages["utility"]
    per_component = train.get("per_component") or {}
    experiments = (utility or {}).get("experiments") or {}
    experiment = next(iter(experiments), None)
    rows = []
    for c in conditions:
        per = evaluation["per_condition"][c]
        acc = experiments[experiment]["per_condition"][c] if experiment else {}
        row = {
            "run": record["name"], "variant": record["variant"], "method": record["method"], "label": record["label"],
            "base": record["base"], "seed": record["seed"], "grid_point": str(record["grid_point"] or ""), "condition": c,
            "fid": evaluation["fid"], "fid_metric": evaluation["fid_metric"], "fid_condition": per["fid"],
            "vendi": evaluation["vendi"], "vendi_condition": per["vendi"], "class_consistency": per["class_consistency"],
            "utility_experiment": experiment, "utility_accuracy": acc.get("accuracy"),
            "utility_majority_rate": acc.get("majority_rate"),
            "clip_score": evaluation.get("clip_score"),
            **{f"inception_fid_{d}": v for d, v in (evaluation.get("inception_fid") or {}).items()},
            "trainable_parameters": train.get("trainable_parameters", 0),
            "trainable_percent_unet": _percent(per_component.get("unet")),
            "trainable_percent_text_encoder": _percent(per_component.get("text_encoder")),
            "train_steps": train.get("steps"), "train_wall_time_s": train.get("train_wall_time_s"),
            "seconds_per_step": train.get("seconds_per_step"), "peak_memory_mib": train.get("peak_memory_mib"),
            "peak_memory_kind": train.get("peak_memory_kind"),
            "protocol": evaluation["protocol"], "feature_model": evaluation["feature_model"],
            "feature_weights_sha256": evaluation["feature_weights_sha256"], "random_weights": evaluation["random_weights"],
            "evaluation_report": evaluation["report"], "git_revision": revision,
        }
        rows.append(row)
    return rows


def _percent(counts: dict[str, int] | None) -> float | None:
    return 100.0 * counts["trainable"] / counts["total"] if counts and counts.get("total") else None


def collect_study(output_dir: str | Path) -> dict[str, Path]:
    """Merge every complete run of the study in ``output_dir`` into results, tables, figures and report.

    Raises :class:`UserError` when no method (no run besides the base model) is complete.
    """
    from hf_cxr_diffusion.study.plots import write_figures, write_report
    from hf_cxr_diffusion.study.tables import write_tables

    folder = StudyFolder(Path(output_dir))
    study = folder.read_identity()
    identity = study["identity"]
    conditions = list(identity["conditions"])
    revision = git_revision()
    rows: list[dict[str, Any]] = []
    incomplete: list[str] = []
    seeds = list(identity["seeds"])
    for record in study["run_details"]:
        record = {**record, "seeds_in_study": seeds, "utility": identity.get("utility") is not None}
        record["variant"] = _variant(record)
        got = run_rows(folder, record, conditions, revision)
        if got is None:
            incomplete.append(record["name"])
        else:
            rows.extend(got)
    if not any(not r["base"] for r in rows):
        raise UserError(f"{folder.output_dir}: no method of the study is complete yet (incomplete: {', '.join(incomplete)}); "
                        f"run `cxr-diffusion study --config STUDY.yaml --output-dir {folder.output_dir}` first")
    out = folder.output_dir
    summary = {"source": study["source"], "name": identity.get("name"), "conditions": conditions, "seeds": seeds,
               "git_revision": revision, "incomplete_runs": incomplete, "rows": rows}
    paths = {"json": write_json_atomic(out / RESULTS_JSON, summary)}
    with atomic_path(out / RESULTS_PARQUET) as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)
    paths["parquet"] = out / RESULTS_PARQUET
    paths["tables"] = write_tables(summary, out / TABLES_MD)
    figures = write_figures(folder, summary, out / FIGURES_DIR)
    paths["report"] = write_report(folder, summary, figures, out / REPORT_MD)
    if incomplete:
        logger.warning("collected %d runs; not complete yet: %s", len({r["run"] for r in rows}), ", ".join(incomplete))
    return paths
