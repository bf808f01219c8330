"""``training_summary.json`` and ``loss_curve.png``: what trained, how long, how much memory, final loss."""

from __future__ import annotations

import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hf_cxr_diffusion.artefacts import LOSS_CURVE_FILE, SUMMARY_FILE
from hf_cxr_diffusion.io import atomic_path, write_json_atomic


def parameter_counts(components: Any) -> dict[str, Any]:
    """Trainable and total parameters per component and overall (with percent)."""
    per: dict[str, dict[str, int]] = {}
    for name in ("unet", "text_encoder", "vae"):
        params = list(getattr(components, name).parameters())
        per[name] = {"trainable": sum(p.numel() for p in params if p.requires_grad), "total": sum(p.numel() for p in params)}
    trainable = sum(v["trainable"] for v in per.values())
    total = sum(v["total"] for v in per.values())
    return {"trainable": trainable, "total": total, "trainable_percent": 100.0 * trainable / total, "per_component": per}


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB.

    Linux: ``VmHWM`` of /proc/self/status (``ru_maxrss`` survives ``execve``, so a child started
    from a big parent would report the parent's peak); elsewhere ``ru_maxrss``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak resident set size of this process (and CUDA max allocated on GPU), in MiB."""
    out: dict[str, Any] = {"peak_rss_mib": round(peak_rss_mib(), 1)}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def plot_loss_curve(history: Sequence[tuple[int, float]], path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if history:
        steps, losses = zip(*history)
        ax.plot(steps, losses, lw=1, alpha=0.5, label="loss")
        window = max(1, len(losses) // 20)
        if window > 1:
            smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))]
            ax.plot(steps, smooth, lw=2, label=f"moving mean ({window})")
        ax.legend()
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def write_summary(out_dir: str | Path, summary: dict[str, Any], history: Sequence[tuple[int, float]]) -> Path:
    out = Path(out_dir)
    plot_loss_curve(history, out / LOSS_CURVE_FILE, f"{summary.get('method')} on {Path(str(summary.get('dataset'))).name}")
    return write_json_atomic(out / SUMMARY_FILE, summary)
