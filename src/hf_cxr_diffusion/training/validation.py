"""Validation during training: image grids for fixed prompts/seeds, XRV-FID / Vendi metrics, keep-best,
and the final reload check.

:class:`Validator` runs what ``--validation-steps``, ``--validation-metrics-steps`` and
``--keep-best`` ask for after an optimizer step; :func:`reload_check` compares the trained
components with the saved artefact applied to a fresh base pipeline. Images come from a ``StableDiffusionPipeline`` assembled from the components being trained (no
copy), with the base model's noise schedule under a DDIM sampler. Prompt ``i`` always uses seed
``seed + i``, so grids from different steps are comparable. Generation uses its own generators
and eval mode, so it never perturbs the training's random streams.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from hf_cxr_diffusion.artefacts import VALIDATION_DIR, read_training_output
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import atomic_path, write_json_atomic
from hf_cxr_diffusion.models.pipeline import build_pipeline
from hf_cxr_diffusion.plots import image_grid
from hf_cxr_diffusion.training.config import TrainConfig
from hf_cxr_diffusion.training.distributed import broadcast_flag
from hf_cxr_diffusion.training.state import TrainerState

logger = logging.getLogger(__name__)

BEST_DIR = "best"
BEST_METRIC_FILE = "best_metric.json"


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


@torch.no_grad()
def generate(pipe, prompts: Sequence[str], seed: int, resolution: int, steps: int, batch_size: int = 4) -> list[Image.Image]:
    """One image per prompt; prompt ``i`` uses a generator seeded ``seed + i``."""
    device = pipe.unet.device
    images: list[Image.Image] = []
    with eval_mode(pipe.unet, pipe.text_encoder, pipe.vae):
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            gens = [torch.Generator(device=device).manual_seed(seed + start + i) for i in range(len(chunk))]
            out = pipe(chunk, generator=gens, num_inference_steps=steps, height=resolution, width=resolution,
                       output_type="pil")
            images.extend(out.images)
    return images


def save_grid(images: Sequence[Image.Image], path: str | Path) -> Path:
    """Save images side by side (up to 4 per row) as one PNG, atomically."""
    grid = image_grid([img.convert("RGB") for img in images], ncols=min(4, len(images)), pad=0)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return Path(path)


def metric_value(result: Any) -> float:
    """The scalar of one metric result (a number, or a dict with ``value`` / ``score``); None -> NaN (too few images)."""
    if isinstance(result, dict):
        for key in ("value", "score", "fid", "vendi"):
            if key in result:
                return metric_value(result[key])
        raise ValueError(f"metric result has no value: {sorted(result)}")
    return float("nan") if result is None else float(result)


def validation_metrics(real: Sequence[Image.Image], synthetic: Sequence[Image.Image], metrics: Sequence[str],
                       allow_random_weights: bool, weights_path: str | None) -> dict[str, float]:
    """XRV-FID / Vendi of ``synthetic`` against held-out ``real`` via :mod:`hf_cxr_diffusion.metrics`."""
    from hf_cxr_diffusion.metrics import evaluate_images

    kwargs: dict[str, Any] = {"metrics": tuple(metrics), "allow_random_weights": allow_random_weights}
    if weights_path:
        kwargs["weights_path"] = weights_path
    results = evaluate_images(list(real), list(synthetic), **kwargs)
    return {name: metric_value(results[name]) for name in metrics}


class Validator:
    """Validation of one run: grids, metrics on held-out images, and the best checkpoint (``--keep-best``).

    Only the main process generates and scores; the others wait. Metric values and the best
    checkpoint are recorded in the run's :class:`TrainerState` (so they survive a resume).

    Args:
        cfg: the run's configuration (prompts, cadences, metrics, held-out split).
        accelerator: the run's ``accelerate.Accelerator``.
        components: the ``SDComponents`` being trained.
        output_dir: the run's output folder (``validation/`` and ``best/`` go there).
        state: the run's state (``metric_history`` and ``best`` are updated in place).
        weights: a context factory putting the weights to validate into the model (EMA), or a no-op.
        on_grid: called with ``(tag, path, step)`` after each grid is saved (the experiment trackers).
        steps_per_epoch: optimizer steps per epoch (turns ``--validation-epochs`` into a step cadence).
    """

    def __init__(self, cfg: TrainConfig, accelerator: Any, components: Any, output_dir: Path, state: TrainerState,
                 weights: Callable[[], contextlib.AbstractContextManager],
                 on_grid: Callable[[str, Path, int], None] | None = None, steps_per_epoch: int = 1) -> None:
        self.cfg, self.acc, self.components, self.out = cfg, accelerator, components, Path(output_dir)
        self.state, self.weights, self.on_grid = state, weights, on_grid
        self.grid_every = cfg.validation_steps or cfg.validation_epochs * steps_per_epoch
        self._held_out: tuple[list, list[str]] | None = None

    def _images(self, prompts: Sequence[str]) -> list[Image.Image]:
        with self.weights(), self.acc.autocast():
            return generate(build_pipeline(self.components), prompts, self.cfg.seed, self.cfg.resolution,
                            self.cfg.num_validation_inference_steps)

    def grid(self, tag: str) -> Path | None:
        """Save ``validation/<tag>.png`` for ``--validation-prompts`` (main process; None when there are none)."""
        if not self.cfg.validation_prompts or not self.acc.is_main_process:
            return None
        prompts = [p for p in self.cfg.validation_prompts for _ in range(self.cfg.num_validation_images)]
        path = save_grid(self._images(prompts), self.out / VALIDATION_DIR / f"{tag}.png")
        logger.info("validation images: %s", path)
        if self.on_grid is not None:
            self.on_grid(tag, path, self.state.global_step)
        return path

    def held_out(self) -> tuple[list, list[str]]:
        """The first K real images and prompts of ``--validation-split`` (K = ``--num-validation-metric-images``)."""
        if self._held_out is None:
            from hf_cxr_diffusion.training.data import load_split

            cfg, k = self.cfg, self.cfg.num_validation_metric_images
            ds = load_split(cfg.dataset, cfg.validation_split, data_dir=cfg.data_dir)
            if len(ds) < k:
                raise UserError(f"validation split {cfg.validation_split!r} has {len(ds)} images, fewer than "
                                f"--num-validation-metric-images {k}")
            rows = ds.select(range(k))
            self._held_out = (list(rows[cfg.image_column]), [str(p) for p in rows[cfg.prompt_column]])
        return self._held_out

    def metrics(self, step: int) -> dict[str, float] | None:
        """Score K generated images against K held-out ones (main process; None elsewhere)."""
        cfg, values = self.cfg, None
        if self.acc.is_main_process:
            real, prompts = self.held_out()
            values = validation_metrics(real, self._images(prompts), cfg.validation_metrics,
                                        cfg.metrics_allow_random_weights, cfg.metrics_weights_path)
            self.state.metric_history.append({"step": step, **values})
            logger.info("step %d validation metrics: %s", step, values)
        self.acc.wait_for_everyone()
        return values

    def _improves(self, value: float) -> bool:
        best = self.state.best
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        from hf_cxr_diffusion.metrics.catalog import higher_is_better

        return value > best["value"] if higher_is_better(self.cfg.keep_best) else value < best["value"]

    def keep_best(self, values: dict[str, float] | None, save_checkpoint: Callable[[], Path | None]) -> None:
        """Copy this step's checkpoint (saved now if missing) to ``best/`` when ``--keep-best`` improved."""
        metric, step = self.cfg.keep_best, self.state.global_step
        improved = False
        if self.acc.is_main_process and self._improves(values[metric]):
            self.state.best = {"metric": metric, "value": values[metric], "step": step}
            improved = True
        if not broadcast_flag(improved, self.acc.num_processes):
            return
        from hf_cxr_diffusion.training.checkpoints import STATE_FILE, checkpoint_dir

        path = checkpoint_dir(self.out, step)
        if not (path / STATE_FILE).is_file():
            path = save_checkpoint()
        if self.acc.is_main_process:
            with atomic_path(self.out / BEST_DIR) as tmp:
                shutil.copytree(path, tmp)
                write_json_atomic(tmp / BEST_METRIC_FILE, self.state.best)
            logger.info("new best %s = %.4f at step %d -> %s", metric, values[metric], step, self.out / BEST_DIR)
        self.acc.wait_for_everyone()

    def after_step(self, save_checkpoint: Callable[[], Path | None]) -> dict[str, float] | None:
        """Grid / metrics / keep-best when their cadence divides the step; returns the metric values, if any."""
        cfg, step = self.cfg, self.state.global_step
        if self.grid_every and step % self.grid_every == 0:
            self.grid(f"step-{step:06d}")
        if not (cfg.validation_metrics_steps and step % cfg.validation_metrics_steps == 0):
            return None
        values = self.metrics(step)
        if cfg.keep_best:
            self.keep_best(values, save_checkpoint)
        return values


class ReloadMismatchError(UserError):
    """The saved artefact does not reproduce the trained model (the run's summary marks it failed)."""


#: output-folder entries that are not the artefact (their tensors are not compared by the reload check)
_NOT_ARTEFACT = ("checkpoint-", BEST_DIR, VALIDATION_DIR)


def tensor_digests(tensors: Iterable[torch.Tensor]) -> Counter:
    """A multiset of exact fingerprints (dtype, shape, sha256 of the bytes) of ``tensors``: equal iff bit-identical."""
    digests: Counter = Counter()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        digests[(str(t.dtype), tuple(t.shape), hashlib.sha256(data).hexdigest())] += 1
    return digests


def artefact_tensor_digests(output_dir: Path) -> Counter:
    """:func:`tensor_digests` of every tensor in the artefact's ``.safetensors`` files (checkpoints, ``best/`` excluded)."""
    from safetensors import safe_open

    files = [f for f in sorted(Path(output_dir).rglob("*.safetensors"))
             if not any(part.startswith(_NOT_ARTEFACT) for part in f.relative_to(output_dir).parts)]
    digests: Counter = Counter()
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            digests += tensor_digests(handle.get_tensor(k) for k in handle.keys())
    return digests


def reload_check(components: Any, output_dir: Path, base_model: str, prompt: str, seed: int, resolution: int,
                 steps: int, autocast: Callable, full_precision: bool,
                 load_kwargs: dict[str, Any] | None = None, *, compare_tensors: bool = False,
                 release: Callable[[], None] | None = None) -> dict[str, Any]:
    """Apply the artefact saved in ``output_dir`` to a fresh ``base_model`` and compare one image with ``components``.

    The trained image (and, with ``compare_tensors``, exact fingerprints of the trainable tensors) is taken
    first; then ``release`` (if given) drops the caller's references to the trained components, so that only
    one pipeline is alive when the fresh one loads. ``compare_tensors``: every trainable tensor must be in
    the artefact's files bit for bit (for methods whose artefact stores them unchanged).
    ``load_kwargs``: the ``revision`` / ``variant`` the run loaded the base model with.

    Returns ``{"max_abs_diff", "tolerance", "passed"}`` (tolerance 1e-3 in fp32, 5e-2 with fp16/bf16 frozen weights)
    and, with ``compare_tensors``, ``tensors_compared`` / ``tensors_mismatched``.
    """
    from hf_cxr_diffusion.methods.base import trainable_named_parameters

    device = components.unet.device
    kwargs = dict(num_inference_steps=min(4, steps), height=resolution, width=resolution, output_type="np")
    trained = build_pipeline(components)
    sampler = type(trained.scheduler), trained.scheduler.config
    with torch.no_grad(), autocast(), eval_mode(trained.unet, trained.text_encoder, trained.vae):
        ours = trained(prompt, generator=torch.Generator(device).manual_seed(seed), **kwargs).images
    live = tensor_digests(trainable_named_parameters(components).values()) if compare_tensors else None
    del trained, components
    if release is not None:
        release()
    fresh = build_pipeline(base_model, read_training_output(output_dir), scheduler=sampler[0].from_config(sampler[1]),
                           device=device, load_kwargs=load_kwargs)
    with torch.no_grad(), autocast(), eval_mode(fresh.unet, fresh.text_encoder, fresh.vae):
        theirs = fresh(prompt, generator=torch.Generator(device).manual_seed(seed), **kwargs).images
    del fresh
    diff = float(abs(ours - theirs).max())
    tolerance = 1e-3 if full_precision else 5e-2
    result: dict[str, Any] = {"max_abs_diff": diff, "tolerance": tolerance, "passed": diff <= tolerance}
    if live is not None:
        missing = live - artefact_tensor_digests(output_dir)
        result |= {"tensors_compared": sum(live.values()), "tensors_mismatched": sum(missing.values())}
        result["passed"] = result["passed"] and not missing
    logger.info("final reload check: %s", result)
    return result


def raise_on_reload_mismatch(reload: dict[str, Any] | None, output_dir: Path, allow: bool) -> None:
    """A failed reload check stops the run (non-zero exit) unless ``--allow-reload-mismatch``; then it is a warning."""
    if reload is None or reload["passed"]:
        return
    tensors = (f", {reload['tensors_mismatched']} of its {reload['tensors_compared']} trained tensors not saved bit for bit"
               if reload.get("tensors_mismatched") else "")
    message = (f"final reload check failed: the artefact in {output_dir} reproduces the trained model's image only to "
               f"max |diff| {reload['max_abs_diff']:.4g} (tolerance {reload['tolerance']:g}){tensors}; the run's summary "
               "marks it failed and `cxr-diffusion publish` refuses it")
    if allow:
        logger.warning("%s (--allow-reload-mismatch: accepted)", message)
        return
    raise ReloadMismatchError(f"{message}. Pass --allow-reload-mismatch to keep it anyway")
