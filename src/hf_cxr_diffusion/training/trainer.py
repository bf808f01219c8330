"""The one training loop: any :class:`~hf_cxr_diffusion.methods.base.FineTuningMethod` on ``accelerate``.

``train(TrainConfig) -> TrainResult`` is the Python API (the CLI ``cxr-diffusion train`` is a thin
skin over it). What the loop guarantees:

* the objective is the latent-diffusion loss (Rombach et al. 2022) with epsilon or v targets,
  optional min-SNR-gamma weighting and noise offset (:mod:`.loss`), plus DreamBooth's prior loss;
* caching the frozen VAE's posterior / the frozen text encoder's embeddings does not change the
  maths: both paths draw from the same per-micro-step generator (:mod:`.rng`);
* a run resumed from ``checkpoint-<step>`` continues at the exact next batch with the same random
  streams, so kill + resume ends with the weights of an uninterrupted run (CPU, fp32);
* several processes (``accelerate launch``) average gradients of every trainable tensor by
  all-reduce before each optimizer step (this also covers tensors a method adds during training,
  which DDP would not), starting from rank 0's weights;
* mixed precision keeps trainable parameters in fp32 and casts only frozen tensors to fp16/bf16.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from hf_cxr_diffusion.artefacts import VALIDATION_DIR, read_training_output
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import atomic_path, ensure_output_dir, write_json_atomic
from hf_cxr_diffusion.methods.base import COMPONENTS, FineTuningMethod, trainable_named_parameters
from hf_cxr_diffusion.training import checkpoints as ckpt
from hf_cxr_diffusion.training.caching import LatentCache, TextEmbeddingCache, encode_posterior, encode_prompts
from hf_cxr_diffusion.training.config import METRIC_DIRECTION, TrainConfig
from hf_cxr_diffusion.training.data import ImagePromptData, load_split, load_training_data, tokenize
from hf_cxr_diffusion.training.ema import EMA
from hf_cxr_diffusion.training.loss import noisy_inputs, per_sample_loss, target_for
from hf_cxr_diffusion.training.optim import build_optimizer, build_scheduler
from hf_cxr_diffusion.training.rng import (
    capture_rng_state,
    empty_prompt_mask,
    epoch_permutation,
    restore_rng_state,
    step_generator,
)
from hf_cxr_diffusion.training.summary import parameter_counts, peak_memory, write_summary

logger = logging.getLogger(__name__)

BEST_DIR = "best"


class NonFiniteLossError(UserError):
    """The loss (or a trainable tensor) became NaN/inf; training stopped, the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns: where things are, the final numbers, and the trained objects in memory."""

    output_dir: Path
    global_step: int
    final_loss: float | None
    loss_history: list[tuple[int, float]]
    summary: dict[str, Any]
    method: FineTuningMethod
    components: Any


def resolve_method(cfg: TrainConfig, method: FineTuningMethod | None) -> FineTuningMethod:
    """The method instance: the one passed in, or ``registry.get_method(cfg.method, cfg.method_config)``."""
    if method is not None:
        return method
    from hf_cxr_diffusion.methods.registry import get_method

    return get_method(cfg.method, cfg.method_config)


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    precision = cfg.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        logger.warning("--mixed-precision fp16 needs a CUDA GPU; training in fp32 on this CPU")
        precision = "no"
    log_with = None
    if cfg.report_to != "none":
        from accelerate.utils import is_tensorboard_available, is_wandb_available

        available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[cfg.report_to]()
        if not available:
            raise UserError(f"--report-to {cfg.report_to}: the {cfg.report_to} package is not installed (pip install {cfg.report_to})")
        log_with = cfg.report_to
    project = ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / "logs"))
    return Accelerator(mixed_precision=precision, log_with=log_with, project_config=project)


def model_fingerprint(components: Any) -> str:
    """Architecture of the base model (configs of U-Net, text encoder, VAE), for resume checks."""
    import hashlib

    parts = {
        "unet": dict(components.unet.config),
        "vae": dict(components.vae.config),
        "text_encoder": components.text_encoder.config.to_diff_dict(),
    }
    for value in parts.values():
        for key in [k for k in value if k.startswith("_")]:
            value.pop(key)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flat_config(cfg: TrainConfig) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in cfg.to_dict().items()}


class _Run:
    """State of one training run; :meth:`run` is the loop."""

    def __init__(self, cfg: TrainConfig, accelerator, method: FineTuningMethod) -> None:
        self.cfg = cfg
        self.acc = accelerator
        self.method = method
        self.device = accelerator.device
        self.rank = accelerator.process_index
        self.world = accelerator.num_processes
        self.out = ensure_output_dir(cfg.output_dir)
        self.resume = ckpt.resolve_resume(cfg.resume_from_checkpoint, self.out)
        self._setup_data_and_model()

    # ------------------------------------------------------------------ setup
    def _setup_data_and_model(self) -> None:
        from accelerate.utils import set_seed

        from hf_cxr_diffusion.models.loading import load_components

        cfg, acc = self.cfg, self.acc
        self.data: ImagePromptData = load_training_data(
            cfg.dataset, cfg.dataset_split, cfg.resolution, cfg.image_column, cfg.prompt_column, cfg.instance_prompt
        )
        self.components = load_components(cfg.pretrained_model)
        c = self.components
        if c.vae_scale_factor and cfg.resolution % c.vae_scale_factor:
            raise UserError(f"--resolution {cfg.resolution} is not a multiple of the VAE factor {c.vae_scale_factor}")
        for module in (c.unet, c.vae, c.text_encoder):
            module.to(self.device)
        self.scheduler = c.noise_scheduler
        if cfg.prediction_type is not None:
            self.scheduler.register_to_config(prediction_type=cfg.prediction_type)
        self.prediction_type = self.scheduler.config.prediction_type
        self.class_data = self._class_images() if cfg.with_prior_preservation else None

        set_seed(cfg.seed)  # global RNGs: identical adapter init on every process, seeded dropout
        self.method.apply(c)
        self.resumed_state = self._load_trainable(self.resume) if self.resume is not None else {}
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)
        for name in COMPONENTS:
            module = getattr(c, name)
            for p in module.parameters():
                if not p.requires_grad and p.dtype != self.weight_dtype:
                    p.data = p.data.to(self.weight_dtype)
            module.train(self.method.trains(name))
        if cfg.gradient_checkpointing:
            if self.method.trains("unet"):
                c.unet.enable_gradient_checkpointing()
            if self.method.trains("text_encoder"):
                c.text_encoder.gradient_checkpointing_enable()
            if self.method.trains("vae"):
                c.vae.enable_gradient_checkpointing()
        self.unet_forward = torch.compile(c.unet) if cfg.torch_compile else c.unet
        self._hook_overridden = type(self.method).after_optimizer_step is not FineTuningMethod.after_optimizer_step

        # data order: each process takes a contiguous equal slice of the epoch's permutation
        self.per_rank = len(self.data) // self.world
        if self.per_rank < cfg.train_batch_size:
            raise UserError(
                f"dataset has {len(self.data)} images: fewer than --train-batch-size {cfg.train_batch_size} "
                f"x {self.world} process(es); lower the batch size or add images"
            )
        self.batches_per_epoch = self.per_rank // cfg.train_batch_size
        dropped = len(self.data) - self.batches_per_epoch * cfg.train_batch_size * self.world
        if dropped:
            logger.info("%d image(s) per epoch do not fill a batch and are left out of that epoch (a new order each epoch)", dropped)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.gradient_accumulation_steps)
        self.total_steps = cfg.max_train_steps or cfg.num_train_epochs * self.steps_per_epoch
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)

        self.latent_cache = self.text_cache = self.class_cache = None
        if cfg.cache_latents:
            self._build_caches()

    def _class_images(self):
        from hf_cxr_diffusion.training.dreambooth import ClassImages, class_image_paths, ensure_class_images

        cfg = self.cfg
        if self.acc.is_main_process:
            ensure_class_images(self.components, cfg.class_data_dir, cfg.class_prompt, cfg.num_class_images, cfg.seed,
                                cfg.resolution, cfg.class_generation_steps, batch_size=cfg.train_batch_size)
        self.acc.wait_for_everyone()
        return ClassImages(class_image_paths(cfg.class_data_dir)[: cfg.num_class_images], cfg.class_prompt, cfg.resolution)

    def _build_caches(self) -> None:
        c, bs, show = self.components, self.cfg.train_batch_size, self.acc.is_local_main_process
        if not self.method.trains("vae"):
            self.latent_cache = LatentCache(c.vae, self.data.pixels, len(self.data), bs, self.acc.autocast, show)
            if self.class_data is not None:
                self.class_cache = LatentCache(c.vae, self.class_data.pixels, len(self.class_data), bs, self.acc.autocast, show)
        if not self.method.trains("text_encoder"):
            prompts = self.data.prompts + ([self.class_data.prompt] if self.class_data is not None else [])
            prompts += [""] if self.cfg.proportion_empty_prompts else []
            self.text_cache = TextEmbeddingCache(c.text_encoder, lambda p: tokenize(c.tokenizer, p), prompts, bs, self.acc.autocast)

    # ------------------------------------------------------------------ objective
    def _posterior(self, indices: Sequence[int], cache: LatentCache | None, pixels: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        if cache is not None:
            mean, std = cache.get(indices)
        else:
            with torch.set_grad_enabled(self.method.trains("vae")), self.acc.autocast():
                mean, std = encode_posterior(self.components.vae, pixels(indices))
        return mean.float(), std.float()

    def _text(self, prompts: Sequence[str]) -> torch.Tensor:
        if self.text_cache is not None:
            return self.text_cache.get(prompts)
        with torch.set_grad_enabled(self.method.trains("text_encoder")), self.acc.autocast():
            return encode_prompts(self.components.text_encoder, tokenize(self.components.tokenizer, prompts))

    def batch_loss(self, indices: Sequence[int], micro_step: int) -> torch.Tensor:
        """Loss of one micro-batch; all its random draws come from the micro-step's generator."""
        cfg = self.cfg
        mean, std = self._posterior(indices, self.latent_cache, self.data.pixels)
        prompts = [self.data.prompts[i] for i in indices]
        if cfg.proportion_empty_prompts:
            mask = empty_prompt_mask(cfg.seed, self.rank, micro_step, len(prompts), cfg.proportion_empty_prompts)
            prompts = ["" if drop else p for p, drop in zip(prompts, mask)]
        if self.class_data is not None:
            class_indices = [i % len(self.class_data) for i in indices]
            cmean, cstd = self._posterior(class_indices, self.class_cache, self.class_data.pixels)
            mean, std = torch.cat([mean, cmean]), torch.cat([std, cstd])
            prompts = prompts + [self.class_data.prompt] * len(indices)
        hidden = self._text(prompts)
        gen = step_generator(cfg.seed, self.rank, micro_step, self.device)
        batch = noisy_inputs(mean, std, self.components.vae.config.scaling_factor, self.scheduler, gen, cfg.noise_offset)
        with self.acc.autocast():
            pred = self.unet_forward(batch.noisy_latents, batch.timesteps, hidden, return_dict=False)[0]
        losses = per_sample_loss(pred, target_for(self.scheduler, batch, self.prediction_type), self.scheduler,
                                 batch.timesteps, self.prediction_type, cfg.snr_gamma)
        if self.class_data is None:
            return losses.mean()
        instance, prior = losses.chunk(2)
        return instance.mean() + cfg.prior_loss_weight * prior.mean()

    # ------------------------------------------------------------------ distributed helpers
    def _sync_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _broadcast_trainable(self) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for p in trainable_named_parameters(self.components).values():
                dist.broadcast(p.data, src=0)

    def _check_same_shapes_across_ranks(self, params: Sequence[torch.nn.Parameter], step: int) -> None:
        """A method that reshapes itself (SeLoRA) must do it identically on every process."""
        if self.world == 1:
            return
        import torch.distributed as dist

        n = sum(p.numel() for p in params)
        t = torch.tensor([n, -n], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if t[0].item() != -t[1].item():
            raise RuntimeError(
                f"{self.method.name} changed its trainable parameters differently on the processes at step {step} "
                f"({int(-t[1].item())} vs {int(t[0].item())} values); this method cannot run multi-process"
            )

    def _mean_across(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    # ------------------------------------------------------------------ checkpoints
    def _expected_identity(self) -> dict[str, Any]:
        return {"method": self.method.name, "method_config": json.loads(json.dumps(self.method.config.to_dict(), default=str)),
                "model_fingerprint": model_fingerprint(self.components)}

    def _save_checkpoint(self, state: dict[str, Any]) -> Path | None:
        from accelerate.utils import gather_object
        from safetensors.torch import save_file

        named = trainable_named_parameters(self.components)
        bad = [n for n, p in named.items() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(
                f"trainable tensor(s) {bad[:3]} became NaN/inf at step {state['global_step']}; stopped without saving. "
                f"Last good checkpoint: {self._last_checkpoint_name()}; lower --learning-rate or check the method"
            )
        rng_states = gather_object([capture_rng_state()]) if self.world > 1 else [capture_rng_state()]
        path = None
        if self.acc.is_main_process:
            names = {id(p): n for n, p in named.items()}

            def write(tmp: Path) -> None:
                trainable = {k: v.detach().to("cpu").contiguous() for k, v in self.method.trainable_state_dict(self.components).items()}
                save_file(trainable, str(tmp / "trainable.safetensors"))
                torch.save(ckpt.optimizer_state(self.optimizer.optimizer, names), tmp / "optimizer.pt")
                torch.save(self.lr_scheduler.state_dict(), tmp / "scheduler.pt")
                if self.ema is not None:
                    torch.save(self.ema.state_dict(), tmp / "ema.pt")
                torch.save(rng_states, tmp / "rng.pt")
                (tmp / ckpt.STATE_FILE).write_text(json.dumps({**state, **self._expected_identity()}, indent=1), encoding="utf-8")

            path = ckpt.save_checkpoint(self.out, state["global_step"], write, self.cfg.checkpoints_total_limit)
            logger.info("saved %s", path)
        self.acc.wait_for_everyone()
        return path

    def _last_checkpoint_name(self) -> str:
        found = ckpt.list_checkpoints(self.out)
        return found[-1].name if found else "none"

    def _load_trainable(self, path: Path) -> dict[str, Any]:
        """Check compatibility and restore the trainable tensors (before the optimizer is built)."""
        from safetensors.torch import load_file

        state = ckpt.read_state(path)
        ckpt.check_compatible(state, self._expected_identity(), path)
        try:
            self.method.load_trainable_state_dict(self.components, load_file(str(path / "trainable.safetensors")))
        except (KeyError, RuntimeError) as err:
            raise UserError(f"checkpoint {path} does not fit this model/method: {err}") from err
        return state

    def _load_rest(self, path: Path) -> None:
        named = trainable_named_parameters(self.components)
        ckpt.load_optimizer_state(self.optimizer.optimizer, torch.load(path / "optimizer.pt", weights_only=False), named)
        self.lr_scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        if self.ema is not None and (path / "ema.pt").is_file():
            self.ema.load_state_dict(torch.load(path / "ema.pt", weights_only=False))
        rng = torch.load(path / "rng.pt", weights_only=False)
        if len(rng) != self.world:
            logger.warning("checkpoint has RNG states of %d process(es), this run has %d: dropout streams differ", len(rng), self.world)
        restore_rng_state(rng[self.rank % len(rng)])

    # ------------------------------------------------------------------ validation
    def _validation_grid(self, tag: str) -> Path | None:
        from hf_cxr_diffusion.training.validation import build_pipeline, generate, save_grid

        cfg = self.cfg
        if not cfg.validation_prompts or not self.acc.is_main_process:
            return None
        with self._ema_weights(), self.acc.autocast():
            images = generate(build_pipeline(self.components), cfg.validation_prompts, cfg.seed, cfg.resolution,
                              cfg.num_validation_inference_steps)
        path = save_grid(images, self.out / VALIDATION_DIR / f"{tag}.png")
        logger.info("validation images: %s", path)
        return path

    def _ema_weights(self):
        if self.ema is None:
            return contextlib.nullcontext()
        return self.ema.swapped_in(trainable_named_parameters(self.components))

    def _held_out(self):
        if self._held_out_cache is None:
            k = self.cfg.num_validation_metric_images
            ds = load_split(self.cfg.dataset, self.cfg.validation_split)
            if len(ds) < k:
                raise UserError(f"validation split {self.cfg.validation_split!r} has {len(ds)} images, fewer than "
                                f"--num-validation-metric-images {k}")
            rows = ds.select(range(k))
            self._held_out_cache = (list(rows[self.cfg.image_column]), [str(p) for p in rows[self.cfg.prompt_column]])
        return self._held_out_cache

    def _validation_metrics(self, step: int) -> dict[str, float] | None:
        from hf_cxr_diffusion.training.validation import build_pipeline, generate, validation_metrics

        cfg = self.cfg
        values = None
        if self.acc.is_main_process:
            real, prompts = self._held_out()
            with self._ema_weights(), self.acc.autocast():
                synthetic = generate(build_pipeline(self.components), prompts, cfg.seed, cfg.resolution,
                                     cfg.num_validation_inference_steps)
            values = validation_metrics(real, synthetic, cfg.validation_metrics, cfg.metrics_allow_random_weights,
                                        cfg.metrics_weights_path)
            self.metric_history.append({"step": step, **values})
            logger.info("step %d validation metrics: %s", step, values)
        self.acc.wait_for_everyone()
        return values

    def _maybe_keep_best(self, values: dict[str, float] | None, state: dict[str, Any]) -> None:
        from accelerate.utils import broadcast_object_list

        metric = self.cfg.keep_best
        improved = [False]
        if self.acc.is_main_process:
            value = values[metric]
            better = math.isfinite(value) and (
                self.best is None or (value < self.best["value"] if METRIC_DIRECTION[metric] == "min" else value > self.best["value"])
            )
            if better:
                self.best = {"metric": metric, "value": value, "step": state["global_step"]}
                improved = [True]
        if self.world > 1:
            improved = broadcast_object_list(improved)
        if not improved[0]:
            return
        state = {**state, "best": self.best}
        path = self.out / f"checkpoint-{state['global_step']}"
        if not (path / ckpt.STATE_FILE).is_file():
            path = self._save_checkpoint(state)
        if self.acc.is_main_process:
            with atomic_path(self.out / BEST_DIR) as tmp:
                shutil.copytree(path, tmp)
                write_json_atomic(tmp / "best_metric.json", self.best)
            logger.info("new best %s = %.4f at step %d -> %s", metric, self.best["value"], self.best["step"], self.out / BEST_DIR)
        self.acc.wait_for_everyone()

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        cfg, acc, c = self.cfg, self.acc, self.components
        resume = self.resume
        state: dict[str, Any] = {"global_step": 0, "epoch": 0, "next_batch": 0, "micro_step": 0, "loss_history": [],
                                 "epoch_seconds": {}, "metric_history": [], "best": None, **self.resumed_state}
        self._broadcast_trainable()

        optimizer, self.optimizer_name = build_optimizer(self.method.param_groups(c, cfg.learning_rate), cfg)
        self.lr_scheduler = build_scheduler(optimizer, cfg, self.total_steps)
        self.optimizer = acc.prepare(optimizer)
        self.ema = EMA(trainable_named_parameters(c), cfg.ema_decay) if cfg.use_ema else None
        if resume is not None:
            self._load_rest(resume)
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume, state["global_step"], state["epoch"], state["next_batch"])
        self.metric_history = list(state["metric_history"])
        self.best = state["best"]
        self._held_out_cache = None
        history = [tuple(x) for x in state["loss_history"]]
        epoch_seconds = {int(k): v for k, v in state["epoch_seconds"].items()}
        if cfg.report_to != "none":
            acc.init_trackers("hf-cxr-diffusion", config=_flat_config(cfg))

        from tqdm.auto import tqdm

        progress = tqdm(total=self.total_steps, initial=state["global_step"], desc=f"train {self.method.name}",
                        disable=not acc.is_local_main_process)
        step, micro = state["global_step"], state["micro_step"]
        accum = cfg.gradient_accumulation_steps
        named = trainable_named_parameters(c)
        params = list(named.values())
        t_start, cpu_start = time.perf_counter(), time.process_time()
        first_step_done: tuple[float, float, int] | None = None
        window: list[float] = []
        epoch = state["epoch"]
        while step < self.total_steps and epoch < self.num_epochs:
            order = epoch_permutation(cfg.seed, epoch, len(self.data))[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
            t_epoch = time.perf_counter()
            first = state["next_batch"] if epoch == state["epoch"] else 0
            for b in range(first, self.batches_per_epoch):
                indices = order[b * cfg.train_batch_size : (b + 1) * cfg.train_batch_size]
                window_start = (b // accum) * accum
                window_len = min(accum, self.batches_per_epoch - window_start)
                sync = b == window_start + window_len - 1
                loss = self.batch_loss(indices, micro)
                value = self._mean_across(loss.detach().item())
                if not math.isfinite(value):
                    raise NonFiniteLossError(
                        f"loss is {value} at step {step + 1} (epoch {epoch}, batch {b}); training stopped. Last good "
                        f"checkpoint: {self._last_checkpoint_name()}. Lower --learning-rate, use --mixed-precision bf16/no, "
                        "or check the data"
                    )
                acc.backward(loss / window_len)
                window.append(value)
                micro += 1
                if not sync:
                    continue
                self._sync_gradients(params)
                if cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                step += 1
                if first_step_done is None:  # steady-state timing starts after the first (warm-up) step
                    first_step_done = (time.perf_counter(), time.process_time(), step)
                if self._hook_overridden:
                    micro_batch = (indices, micro - 1)
                    self.method.after_optimizer_step(step, c, self.optimizer.optimizer, lambda mb=micro_batch: self.batch_loss(*mb))
                    named = trainable_named_parameters(c)
                    params = list(named.values())
                    self._check_same_shapes_across_ranks(params, step)
                if self.ema is not None:
                    self.ema.update(named)
                step_loss = sum(window) / len(window)
                window = []
                history.append((step, step_loss))
                lr = self.lr_scheduler.get_last_lr()[0]
                progress.update(1)
                progress.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
                if cfg.report_to != "none":
                    acc.log({"train/loss": step_loss, "train/lr": lr}, step=step)
                done_epoch = b + 1 == self.batches_per_epoch
                epoch_seconds[epoch] = epoch_seconds.get(epoch, 0.0) + time.perf_counter() - t_epoch
                t_epoch = time.perf_counter()
                state = {**state, "global_step": step, "micro_step": micro, "epoch": epoch + 1 if done_epoch else epoch,
                         "next_batch": 0 if done_epoch else b + 1, "loss_history": history, "epoch_seconds": epoch_seconds,
                         "metric_history": self.metric_history, "best": self.best}
                if cfg.checkpointing_steps and step % cfg.checkpointing_steps == 0:
                    self._save_checkpoint(state)
                if cfg.validation_steps and step % cfg.validation_steps == 0:
                    self._validation_grid(f"step-{step:06d}")
                if cfg.validation_metrics_steps and step % cfg.validation_metrics_steps == 0:
                    values = self._validation_metrics(step)
                    if cfg.report_to != "none" and values:
                        acc.log({f"validation/{k}": v for k, v in values.items()}, step=step)
                    if cfg.keep_best:
                        self._maybe_keep_best(values, state)
                if step >= self.total_steps:
                    break
            epoch += 1
        progress.close()
        wall, cpu = time.perf_counter() - t_start, time.process_time() - cpu_start
        steady = None
        if first_step_done is not None and step > first_step_done[2]:
            n = step - first_step_done[2]
            steady = (n / (time.perf_counter() - first_step_done[0]), (time.process_time() - first_step_done[1]) / n)
        return self._finish(state, history, epoch_seconds, (wall, cpu, steady), resume)

    # ------------------------------------------------------------------ final outputs
    def _restore_frozen_full_precision(self) -> None:
        """Frozen components were cast to fp16/bf16: reload them in fp32 so a saved pipeline keeps the base weights."""
        if self.weight_dtype == torch.float32:
            return
        from hf_cxr_diffusion.models.loading import load_components

        fresh = load_components(self.cfg.pretrained_model)
        for name in COMPONENTS:
            if not self.method.trains(name):
                setattr(self.components, name, getattr(fresh, name).to(self.device))

    def _reload_check(self) -> dict[str, Any] | None:
        """Apply the saved artefact to a fresh base pipeline and compare one validation image."""
        from hf_cxr_diffusion.methods.loading import load_adapter
        from hf_cxr_diffusion.models.loading import load_pipeline
        from hf_cxr_diffusion.training.validation import build_pipeline, eval_mode

        cfg = self.cfg
        saved = read_training_output(self.out)
        prompt = (cfg.validation_prompts or self.data.prompts)[0]
        kwargs = dict(num_inference_steps=min(4, cfg.num_validation_inference_steps), height=cfg.resolution,
                      width=cfg.resolution, output_type="np")
        if not saved.is_adapter:
            fresh = load_pipeline(self.out).to(self.device)
        else:
            fresh = load_adapter(load_pipeline(cfg.pretrained_model).to(self.device), self.out)
        trained = build_pipeline(self.components, type(fresh.scheduler).from_config(fresh.scheduler.config))
        with torch.no_grad(), self.acc.autocast(), eval_mode(trained.unet, trained.text_encoder, trained.vae):
            ours = trained(prompt, generator=torch.Generator(self.device).manual_seed(cfg.seed), **kwargs).images
            theirs = fresh(prompt, generator=torch.Generator(self.device).manual_seed(cfg.seed), **kwargs).images
        diff = float(abs(ours - theirs).max())
        tolerance = 1e-3 if self.weight_dtype == torch.float32 else 5e-2
        result = {"max_abs_diff": diff, "tolerance": tolerance, "passed": diff <= tolerance}
        (logger.info if result["passed"] else logger.warning)("final reload check: %s", result)
        return result

    def _finish(self, state: dict[str, Any], history: list, epoch_seconds: dict, times: tuple, resume: Path | None) -> TrainResult:
        cfg, acc = self.cfg, self.acc
        wall, cpu, steady = times
        acc.wait_for_everyone()
        if self.ema is not None:
            self.ema.copy_to(trainable_named_parameters(self.components))
        summary: dict[str, Any] = {}
        if acc.is_main_process:
            if cfg.validation_prompts:
                self._validation_grid("final")
            self._restore_frozen_full_precision()
            self.method.save(self.components, self.out, base_model=cfg.pretrained_model)
            reload = self._reload_check() if cfg.final_reload_check else None
            steps_this_run = state["global_step"] - (ckpt.read_state(resume)["global_step"] if resume else 0)
            summary = {
                "method": self.method.name,
                "method_config": self.method.config.to_dict(),
                "base_model": cfg.pretrained_model,
                "dataset": cfg.dataset,
                "num_train_images": len(self.data),
                "resolution": cfg.resolution,
                "parameters": parameter_counts(self.components),
                "steps": state["global_step"],
                "total_steps": self.total_steps,
                "epochs": self.num_epochs,
                "train_batch_size": cfg.train_batch_size,
                "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
                "num_processes": self.world,
                "effective_batch_size": cfg.train_batch_size * cfg.gradient_accumulation_steps * self.world,
                "mixed_precision": {"requested": cfg.mixed_precision, "used": acc.mixed_precision},
                "optimizer": self.optimizer_name,
                "cached": {"latents": self.latent_cache is not None, "text_embeddings": self.text_cache is not None},
                "prediction_type": self.prediction_type,
                "wall_time_seconds": round(wall, 3),
                "steps_per_second_this_run": round(steps_this_run / wall, 4) if wall > 0 else None,
                "cpu_seconds_per_step_this_run": round(cpu / steps_this_run, 4) if steps_this_run else None,
                "steady_state": {"steps_per_second": round(steady[0], 4), "cpu_seconds_per_step": round(steady[1], 4)}
                if steady else None,  # after the first (warm-up) step
                "wall_time_per_epoch_seconds": {str(k): round(v, 3) for k, v in sorted(epoch_seconds.items())},
                "peak_memory": peak_memory(self.device),
                "final_loss": history[-1][1] if history else None,
                "validation_metrics": self.metric_history,
                "best": self.best,
                "reload_check": reload,
                "resumed_from": str(resume) if resume else None,
                "config": cfg.to_dict(),
            }
            write_summary(self.out, summary, history)
        acc.wait_for_everyone()
        return TrainResult(self.out, state["global_step"], history[-1][1] if history else None, history, summary,
                           self.method, self.components)


def train(config: TrainConfig, method: FineTuningMethod | None = None) -> TrainResult:
    """Fine-tune ``config.pretrained_model`` on ``config.dataset`` with ``config.method`` (or ``method``).

    Writes into ``config.output_dir`` the method's artefact (see docs/design.md), ``checkpoint-<step>/``
    folders, ``training_summary.json``, ``loss_curve.png`` and ``validation/`` grids.
    """
    cfg = config.validate()
    method = resolve_method(cfg, method)
    accelerator = make_accelerator(cfg)
    try:
        return _Run(cfg, accelerator, method).run()
    finally:
        accelerator.end_training()
