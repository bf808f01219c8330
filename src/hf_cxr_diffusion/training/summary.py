"""``training_summary.json`` and ``loss_curve.png``: what trained, how long, how much memory, final loss."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hf_cxr_diffusion.artefacts import LOSS_CURVE_FILE, SUMMARY_FILE
from hf_cxr_diffusion.io import write_json_atomic
from hf_cxr_diffusion.training.config import TrainConfig
from hf_cxr_diffusion.training.setup import EpochPlan
from hf_cxr_diffusion.training.state import TrainerState


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


class RunClock:
    """Wall and CPU time of the loop, and its steady state after the first (warm-up) optimizer step."""

    def __init__(self) -> None:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        self.first: tuple[float, float, int] | None = None
        self.stopped: tuple[float, float, int] | None = None

    def step_done(self, step: int) -> None:
        if self.first is None:
            self.first = (time.perf_counter(), time.process_time(), step)

    def stop(self, step: int) -> None:
        self.stopped = (time.perf_counter(), time.process_time(), step)

    def timing(self, steps_this_run: int) -> dict[str, Any]:
        """The summary's timing fields (call after :meth:`stop`)."""
        wall_end, cpu_end, step = self.stopped or (time.perf_counter(), time.process_time(), 0)
        wall, cpu = wall_end - self.wall0, cpu_end - self.cpu0
        steady = None
        if self.first is not None and step > self.first[2]:
            n = step - self.first[2]
            steady = {"steps_per_second": round(n / (wall_end - self.first[0]), 4),
                      "cpu_seconds_per_step": round((cpu_end - self.first[1]) / n, 4)}
        return {
            "wall_time_seconds": round(wall, 3),
            "steps_per_second_this_run": round(steps_this_run / wall, 4) if wall > 0 else None,
            "cpu_seconds_per_step_this_run": round(cpu / steps_this_run, 4) if steps_this_run else None,
            "steady_state": steady,  # after the first (warm-up) step
        }


def build_summary(cfg: TrainConfig, method: Any, components: Any, state: TrainerState, *, num_images: int,
                  plan: EpochPlan, world: int, precision_used: str, optimizer: str, cached: dict[str, bool],
                  prediction_type: str, timing: dict[str, Any], device: torch.device, reload: dict[str, Any] | None,
                  resumed_from: Path | None, start_step: int = 0,
                  parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``training_summary.json`` (what trained, on what, how long, how much memory).

    ``parameters``: :func:`parameter_counts` taken earlier (the components may be released by then).

    ``steps`` is where the run ended, ``steps_this_run`` how many of them this process ran (after
    resuming at ``start_step``), and ``config`` the configuration this process ran with."""
    return {
        "method": method.name,
        "method_config": method.config.to_dict(),
        "base_model": cfg.pretrained_model,
        "dataset": cfg.data_source,
        "num_train_images": num_images,
        "resolution": cfg.resolution,
        "parameters": parameter_counts(components) if parameters is None else parameters,
        "steps": state.global_step,
        "steps_this_run": state.global_step - start_step,
        "resumed_from_step": start_step if resumed_from else None,
        "total_steps": plan.total_steps,
        "epochs": plan.num_epochs,
        "train_batch_size": cfg.train_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "num_processes": world,
        "effective_batch_size": cfg.train_batch_size * cfg.gradient_accumulation_steps * world,
        "mixed_precision": {"requested": cfg.mixed_precision, "used": precision_used},
        "device": device.type,
        "optimizer": optimizer,
        "cached": cached,
        "prediction_type": prediction_type,
        **timing,
        "wall_time_per_epoch_seconds": {str(k): round(v, 3) for k, v in sorted(state.epoch_seconds.items())},
        "peak_memory": peak_memory(device),
        "final_loss": state.final_loss,
        "validation_metrics": state.metric_history,
        "best": state.best,
        "reload_check": reload,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "config": cfg.to_dict(),
    }


def reload_check_passed(summary: dict[str, Any]) -> bool | None:
    """Whether the run's final reload check passed (``None``: it did not run); ``publish`` refuses ``False``."""
    reload = summary.get("reload_check")
    return None if reload is None else bool(reload["passed"])


def plot_loss_curve(history: Sequence[tuple[int, float]], path: str | Path, title: str) -> Path:
    """The per-step loss and (past 40 steps) its moving mean over 1/20 of the run, as a PNG (PIL, no matplotlib)."""
    from hf_cxr_diffusion.plots import line_chart

    series: list[tuple[str, Sequence[float], Sequence[float], int]] = []
    if history:
        steps, losses = zip(*history)
        series.append(("loss", steps, losses, 1))
        window = max(1, len(losses) // 20)
        if window > 1:
            smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))]
            series.append((f"moving mean ({window})", steps, smooth, 2))
    return line_chart(series, path, xlabel="optimizer step", ylabel="training loss", title=title)


def write_summary(output_dir: str | Path, summary: dict[str, Any], history: Sequence[tuple[int, float]]) -> Path:
    out = Path(output_dir)
    plot_loss_curve(history, out / LOSS_CURVE_FILE, f"{summary.get('method')} on {Path(str(summary.get('dataset'))).name}")
    return write_json_atomic(out / SUMMARY_FILE, summary)
