"""Results of the classifier experiments: predictions CSVs, JSON, a Markdown table like the study's
(accuracy, F1, AUC, delta vs baseline) and plots (accuracy bars, training curves, confusion matrices)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hf_cxr_diffusion.downstream.data import LabelSpace, Pool
from hf_cxr_diffusion.downstream.metrics import predictions_of
from hf_cxr_diffusion.io import atomic_path, write_json_atomic, write_text_atomic

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PREDICTIONS_CSV = "predictions.csv"


def predictions_frame(test: Pool, targets: np.ndarray, probs: np.ndarray, space: LabelSpace) -> pd.DataFrame:
    """One row per real test image: its row in the test split, patient, truth, prediction, probabilities."""
    pred = predictions_of(probs, space)
    frame = pd.DataFrame({"row": test.rows, "patient_id": test.patients})
    if space.mode == "multilabel":
        for j, name in enumerate(space.class_names):
            frame[f"true_{name}"] = targets[:, j].astype(int)
            frame[f"pred_{name}"] = pred[:, j]
    else:
        frame["y_true"] = targets.astype(int)
        frame["y_pred"] = pred
    for j, name in enumerate(space.class_names):
        frame[f"prob_{name}"] = probs[:, j]
    return frame


def write_csv_atomic(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.17g")


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def markdown_table(results: dict[str, Any]) -> str:
    """The study's results table: one row per experiment, delta in accuracy points vs baseline."""
    counts = results["counts"]
    rows = [
        f"| Experiment | Real data (% of the {counts['real_train']:,} real training images) | Synthetic data (% of the "
        f"{counts['synthetic_pool']:,} synthetic images) | Total images | Accuracy [95% CI] | Majority rate | F1 Score | AUC "
        "| Δ vs Baseline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for exp in results["experiments"]:
        m = exp["metrics"]
        delta = exp.get("delta_accuracy_vs_baseline")
        delta_text = "" if delta is None or exp["name"] == "baseline" else f"{delta * 100:+.1f}%".replace("-", "−")
        low, high = m["accuracy_ci95"]
        rows.append(
            f"| {exp['name']} | {_pct(exp['real_fraction'])} ({exp['n_real']:,}) | {_pct(exp['synthetic_fraction'])} "
            f"({exp['n_synthetic']:,}) | {exp['total']:,} | {_pct(m['accuracy'])} [{_pct(low)}, {_pct(high)}] "
            f"| {_pct(m['majority_rate'])} | {_fmt(m['f1'])} | {_fmt(m['auc'])} | {delta_text} |"
        )
    head = [
        "# Real vs synthetic classifier experiments",
        "",
        f"Classifier: {results['config']['arch']} ({'ImageNet-pretrained' if results['pretrained'] else 'trained from scratch'}), "
        f"{results['label_mode']} over {', '.join(results['class_names'])}; every experiment tested on the same "
        f"{results['counts']['test']} real test images. The majority rate is what always answering the test set's most "
        "common class scores; an accuracy inside it, or a Δ inside the 95% bootstrap intervals, is not an improvement.",
        "",
    ]
    return "\n".join(head + rows) + "\n"


def _save_fig(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_results(results: dict[str, Any], out: Path) -> list[Path]:
    """accuracy_comparison.png, training_curves.png and confusion_matrices.png (binary/multi-class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exps: Sequence[dict[str, Any]] = results["experiments"]
    names = [e["name"] for e in exps]
    paths = []
    fig, ax = plt.subplots(figsize=(1.2 * len(exps) + 2, 3.5))
    acc = [e["metrics"]["accuracy"] * 100 for e in exps]
    ax.bar(names, acc, color=["#888888" if n == "baseline" else "#3b75af" for n in names])
    for i, v in enumerate(acc):
        ax.text(i, v + 0.5, f"{v:.1f}", ha="center", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Accuracy on the real test split")
    ax.tick_params(axis="x", rotation=30)
    paths.append(out / "accuracy_comparison.png")
    _save_fig(fig, paths[-1])

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for e in exps:
        epochs = [h["epoch"] for h in e["history"]]
        ax1.plot(epochs, [h["train_loss"] for h in e["history"]], label=e["name"])
        ax2.plot(epochs, [h["val_metric"] for h in e["history"]], label=e["name"])
    ax1.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ax2.set(xlabel="epoch", ylabel=results["selection_metric"], title="Validation (best epoch kept)")
    ax2.legend(fontsize=7)
    paths.append(out / "training_curves.png")
    _save_fig(fig, paths[-1])

    if results["label_mode"] != "multilabel":
        fig, axes = plt.subplots(1, len(exps), figsize=(2.6 * len(exps), 2.8), squeeze=False)
        classes = results["class_names"]
        for ax, e in zip(axes[0], exps):
            cm = np.asarray(e["metrics"]["confusion_matrix"])
            ax.imshow(cm, cmap="Blues")
            for (i, j), v in np.ndenumerate(cm):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
            ax.set_xticks(range(len(classes)), classes, rotation=45, fontsize=6)
            ax.set_yticks(range(len(classes)), classes, fontsize=6)
            ax.set_title(e["name"], fontsize=9)
            ax.set_xlabel("predicted", fontsize=7)
        axes[0][0].set_ylabel("true", fontsize=7)
        paths.append(out / "confusion_matrices.png")
        _save_fig(fig, paths[-1])
    return paths


def write_report(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write results.json, results.md and the plots into ``out``."""
    baseline = next((e for e in results["experiments"] if e["name"] == "baseline"), None)
    for exp in results["experiments"]:
        exp["delta_accuracy_vs_baseline"] = None if baseline is None else exp["metrics"]["accuracy"] - baseline["metrics"]["accuracy"]
    files = {"json": write_json_atomic(out / RESULTS_JSON, results), "markdown": write_text_atomic(out / RESULTS_MD, markdown_table(results))}
    for path in plot_results(results, out):
        files[path.stem] = path
    return files
