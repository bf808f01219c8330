"""The one training loop: any :class:`~hf_cxr_diffusion.methods.base.FineTuningMethod` on ``accelerate``.

``train(TrainConfig) -> TrainResult`` is the Python API (the CLI ``cxr-diffusion train`` is a thin
skin over it). What the loop guarantees:

* the objective is the latent-diffusion loss (Rombach et al. 2022) with epsilon or v targets,
  optional min-SNR-gamma weighting and noise offset, DreamBooth's prior loss and the method's
  auxiliary term (:mod:`.objective`);
* caching the frozen VAE's posterior / the frozen text encoder's embeddings does not change the
  maths: both paths draw from the same per-micro-step generator (:mod:`.rng`);
* a run resumed from ``checkpoint-<step>`` continues at the exact next batch with the same random
  streams, so kill + resume ends with the weights of an uninterrupted run (CPU, fp32; :mod:`.checkpoints`);
* several processes (``accelerate launch``) average gradients of every trainable tensor by
  all-reduce before each optimizer step (this also covers tensors a method adds during training,
  which DDP would not), starting from rank 0's weights (:mod:`.distributed`);
* mixed precision keeps trainable parameters in fp32 and casts only frozen tensors to fp16/bf16;
* the loop does not wait for the device at every step: micro-batch losses stay on the device and are
  copied to the host together every :data:`LOSS_SYNC_STEPS` optimizer steps, before every checkpoint and
  at the end (every step for methods with an optimizer-step hook), then checked for NaN/inf, averaged
  over processes and logged; the loss history holds the same floats as a per-step ``.item()``.

Validation (grids, metrics, keep-best, the final reload check) lives in :mod:`.validation`, the
summary in :mod:`.summary`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.artefacts import LOSS_CURVE_FILE, SUMMARY_FILE, VALIDATION_DIR
from hf_cxr_diffusion import runs
from hf_cxr_diffusion.io import check_output_location, ensure_output_dir
from hf_cxr_diffusion.methods.base import COMPONENTS, FineTuningMethod, trainable_named_parameters
from hf_cxr_diffusion.training import checkpoints as ckpt
from hf_cxr_diffusion.training import distributed as dist
from hf_cxr_diffusion.training.config import TrainConfig
from hf_cxr_diffusion.training.data import load_training_data
from hf_cxr_diffusion.training.dreambooth import prepare_class_images
from hf_cxr_diffusion.training.ema import EMA
from hf_cxr_diffusion.training.loss import NonFiniteLossError, set_prediction_type
from hf_cxr_diffusion.training.objective import Objective
from hf_cxr_diffusion.training.optim import build_optimizer, build_scheduler
from hf_cxr_diffusion.training.rng import epoch_permutation
from hf_cxr_diffusion.training.setup import (
    EpochPlan,
    check_disk_space,
    check_metric_weights,
    make_accelerator,
    model_fingerprint,
    prepare_modules,
    release_freed_memory,
    resolve_method,
    restore_frozen_full_precision,
    weight_dtype,
)
from hf_cxr_diffusion.training.state import TrainerState
from hf_cxr_diffusion.training.summary import RunClock, build_summary, parameter_counts, write_summary
from hf_cxr_diffusion.training.trackers import Trackers
from hf_cxr_diffusion.training.validation import BEST_DIR, Validator, raise_on_reload_mismatch, reload_check

logger = logging.getLogger(__name__)

#: optimizer steps between two copies of the pending losses to the host (logging and the NaN check happen then)
LOSS_SYNC_STEPS = 10

#: the top-level entries of an output folder that only the trainer writes (``--overwrite`` removes the previous run's)
_OWNED_NAMES = frozenset({BEST_DIR, VALIDATION_DIR, SUMMARY_FILE, LOSS_CURVE_FILE})


def owned_entry(name: str) -> bool:
    """Whether the trainer owns the output-folder entry ``name`` (checkpoints and their temporaries, summary, grids)."""
    return name in _OWNED_NAMES or ckpt.is_owned_entry(name)


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns: where things are, the final numbers, and the trained objects in memory."""

    output_dir: Path
    global_step: int
    final_loss: float | None
    loss_history: list[tuple[int, float]]
    summary: dict[str, Any]
    method: FineTuningMethod
    #: the trained modules; None after ``train(..., keep_components=False)``
    components: Any


class _Run:
    """One training run: :meth:`__init__` sets up data, model, caches and optimizer; :meth:`run` is the loop."""

    def __init__(self, cfg: TrainConfig, accelerator, method: FineTuningMethod, lock: runs.OutputLock | None = None,
                 keep_components: bool = True) -> None:
        from accelerate.utils import set_seed

        from hf_cxr_diffusion.models.loading import load_components, to_channels_last

        self.cfg, self.acc, self.method, self.keep_components = cfg, accelerator, method, keep_components
        self.trackers = Trackers(cfg, accelerator)
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        # inputs first: a base model or dataset that cannot load stops the run before any folder is made
        c = self.components = load_components(cfg.pretrained_model, **cfg.base_load_kwargs)
        if c.vae_scale_factor and cfg.resolution % c.vae_scale_factor:
            raise UserError(f"--resolution {cfg.resolution} is not a multiple of the VAE factor {c.vae_scale_factor}")
        self.data = load_training_data(cfg.dataset, cfg.dataset_split, cfg.resolution, cfg.image_column, cfg.prompt_column,
                                       cfg.instance_prompt, train_data_dir=cfg.train_data_dir,
                                       max_samples=cfg.max_train_samples, data_dir=cfg.data_dir)
        self.out = ensure_output_dir(cfg.output_dir)
        record = runs.read_record(self.out)
        self.resume = ckpt.resolve_resume(cfg.resume_from_checkpoint, self.out, record.get("run_id") if record else None)
        data_fingerprint = runs.input_fingerprint(cfg.train_data_dir or cfg.dataset)
        for name in COMPONENTS:
            getattr(c, name).to(accelerator.device)
        set_prediction_type(c.noise_scheduler, cfg.prediction_type)
        class_data = prepare_class_images(cfg, c, accelerator) if cfg.with_prior_preservation else None

        set_seed(cfg.seed)  # global RNGs: identical adapter init on every process, seeded dropout
        method.apply(c)
        fingerprint = model_fingerprint(c)
        identity = ckpt.resume_identity(method, fingerprint, data_fingerprint)
        config = json.loads(json.dumps(cfg.to_dict(), default=str))
        self.checkpointer = ckpt.Checkpointer(self.out, method, c, identity, accelerator, cfg.checkpoints_total_limit,
                                              config=config)
        self.state = (self.checkpointer.load_trainable(self.resume, runs.TRAIN_RESUMABLE) if self.resume is not None
                      else TrainerState())
        self.start_step = self.state.global_step
        #: optimizer steps whose losses are still on the device: (loss-history index, lr, [(loss, epoch, batch)])
        self.pending: list[tuple[int, float, list[tuple[torch.Tensor, int, int]]]] = []
        self.plan = EpochPlan.build(cfg, len(self.data), self.world)
        if self.start_step > self.plan.total_steps:
            raise UserError(f"checkpoint {self.resume} is at step {self.start_step}, beyond this run's {self.plan.total_steps} "
                            "steps; raise --max-train-steps / --num-train-epochs or resume an earlier checkpoint")
        self.checkpointer.run_id = self._claim_output_dir(config, fingerprint, data_fingerprint, identity, lock)
        self.weight_dtype = weight_dtype(accelerator.mixed_precision)
        prepare_modules(c, method, self.weight_dtype, cfg.gradient_checkpointing)
        if to_channels_last(accelerator.device, c.unet):
            logger.info("U-Net in channels-last memory format (CUDA)")
        unet_forward = torch.compile(c.unet) if cfg.torch_compile else c.unet
        check_disk_space(cfg, self.out, sum(p.numel() for p in trainable_named_parameters(c).values()), self.plan.total_steps)
        method.begin_training(self.plan.total_steps)
        self.objective = Objective(cfg, method, c, self.data, class_data, unet_forward, accelerator.autocast, self.rank,
                                   accelerator.is_local_main_process)
        self._setup_optimizer()

    def _claim_output_dir(self, config: dict[str, Any], model: str, data: str, identity: dict[str, Any],
                          lock: runs.OutputLock | None) -> str | None:
        """Main process: lock the folder, record this run as its owner (refusing another run's folder), remove a
        killed save's leftovers. Returns the run id (None on other processes, which write no checkpoint); a refusal
        is raised on every process."""
        error, run_id = None, None
        if self.acc.is_main_process:
            who = runs.RunIdentity("train", config, data, model, extra={"method": identity["method"],
                                                                        "method_config": identity["method_config"]})
            try:
                if lock is not None:
                    lock.acquire()
                record = runs.claim_output_dir(self.out, who, owned=owned_entry, overwrite=self.cfg.overwrite,
                                               resuming=self.resume is not None, may_change=runs.TRAIN_RESUMABLE)
                runs.remove_stale_temporaries(self.out, owned_entry)
                run_id = record["run_id"]
            except UserError as err:
                error = str(err)
        error = dist.broadcast_value(error, self.world)
        if error is not None:
            raise UserError(error)
        return run_id

    def _setup_optimizer(self) -> None:
        cfg, c = self.cfg, self.components
        dist.broadcast_from_main(list(trainable_named_parameters(c).values()), self.world)
        optimizer, self.optimizer_name = build_optimizer(self.method.param_groups(c, cfg.learning_rate), cfg)
        self.lr_scheduler = build_scheduler(optimizer, cfg, self.plan.total_steps)
        self.optimizer = self.acc.prepare(optimizer)
        self.ema = EMA(trainable_named_parameters(c), cfg.ema_decay) if cfg.use_ema else None
        if self.resume is not None:
            self.checkpointer.load_rest(self.resume, self.optimizer.optimizer, self.lr_scheduler, self.ema)
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", self.resume, self.state.global_step,
                        self.state.epoch, self.state.next_batch)
        self.validator = Validator(cfg, self.acc, c, self.out, self.state, self._validation_weights, self.trackers.image,
                                   self.plan.steps_per_epoch)

    def _validation_weights(self) -> contextlib.AbstractContextManager:
        if self.ema is None:
            return contextlib.nullcontext()
        return self.ema.swapped_in(trainable_named_parameters(self.components))

    def _save_checkpoint(self) -> Path | None:
        return self.checkpointer.save(self.state, self.optimizer.optimizer, self.lr_scheduler, self.ema)

    def _after_optimizer_step(self, indices: list[int], micro: int) -> list[torch.nn.Parameter]:
        """The method's hook (it may add parameters), then the parameters to clip / average from now on."""
        c, step = self.components, self.state.global_step
        self.method.after_optimizer_step(step, c, self.optimizer.optimizer,
                                         lambda: self.objective.losses(indices, micro, auxiliary=False).instance)
        params = list(trainable_named_parameters(c).values())
        low, high = dist.numel_range(params, self.world, self.acc.device)
        if low != high:
            raise RuntimeError(f"{self.method.name} changed its trainable parameters differently on the processes at step "
                               f"{step} ({low} vs {high} values); this method cannot run multi-process")
        return params

    def run(self) -> TrainResult:
        """The loop: micro-batches, gradient accumulation, optimizer steps, checkpoints, validation."""
        from tqdm.auto import tqdm

        cfg, acc, state = self.cfg, self.acc, self.state
        self.trackers.start()
        progress = tqdm(total=self.plan.total_steps, initial=state.global_step, desc=f"train {self.method.name}",
                        disable=not acc.is_local_main_process)
        hook = type(self.method).after_optimizer_step is not FineTuningMethod.after_optimizer_step
        accum, micro, clock = cfg.gradient_accumulation_steps, state.micro_step, RunClock()
        params = list(trainable_named_parameters(self.components).values())
        window: list[tuple[torch.Tensor, int, int]] = []  # (loss on the device, epoch, batch) per micro-batch
        every = [n for n in (LOSS_SYNC_STEPS, cfg.checkpointing_steps, cfg.validation_metrics_steps) if n > 0]
        epoch, first_batch = state.epoch, state.next_batch
        while state.global_step < self.plan.total_steps and epoch < self.plan.num_epochs:
            mine = self.rank * self.plan.per_rank
            order = epoch_permutation(cfg.seed, epoch, len(self.data))[mine : mine + self.plan.per_rank]
            t_epoch = time.perf_counter()
            for b in range(first_batch, self.plan.batches_per_epoch):
                indices = order[b * cfg.train_batch_size : (b + 1) * cfg.train_batch_size]
                window_len, ends_window = self.plan.window(b, accum)
                loss = self.objective.loss(indices, micro)
                acc.backward(loss / window_len)
                window.append((loss.detach(), epoch, b))
                micro += 1
                if not ends_window:
                    continue
                dist.average_gradients(params, self.world)
                if cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                now = time.perf_counter()
                state.finish_step(micro, math.nan, epoch, b, self.plan.batches_per_epoch, now - t_epoch)  # loss: _sync_losses
                self.pending.append((len(state.loss_history) - 1, self.lr_scheduler.get_last_lr()[0], window))
                t_epoch, window = now, []
                clock.step_done(state.global_step)
                if hook:
                    params = self._after_optimizer_step(indices, micro - 1)
                self.optimizer.zero_grad(set_to_none=True)  # after the hook: AdaLoRA reads the step's .grad
                if self.ema is not None:
                    self.ema.update(trainable_named_parameters(self.components))
                progress.update(1)
                # the same steps on every process; before any checkpoint (it holds the history; never NaN weights)
                if hook or state.global_step >= self.plan.total_steps or any(state.global_step % n == 0 for n in every):
                    self._sync_losses(progress)
                if cfg.checkpointing_steps and state.global_step % cfg.checkpointing_steps == 0:
                    self._save_checkpoint()
                values = self.validator.after_step(self._save_checkpoint)
                self.trackers.scalars({f"validation/{k}": v for k, v in (values or {}).items()}, state.global_step)
                if state.global_step >= self.plan.total_steps:
                    break
            epoch, first_batch = epoch + 1, 0
        self._sync_losses(progress)
        progress.close()
        clock.stop(state.global_step)
        return self._finish(clock)

    def _sync_losses(self, progress) -> None:
        """The pending steps' losses to the host in one copy: NaN/inf check, mean over processes, history, logging."""
        if not self.pending:
            return
        micro = [m for _, _, window in self.pending for m in window]
        values = iter(dist.mean_over_processes(torch.stack([loss.double() for loss, _, _ in micro]), self.world))
        history = self.state.loss_history
        for index, lr, window in self.pending:
            step = history[index][0]
            losses = [next(values) for _ in window]
            for value, (_, epoch, batch) in zip(losses, window):
                if not math.isfinite(value):
                    raise NonFiniteLossError(
                        f"loss is {value} at step {step} (epoch {epoch}, batch {batch}); training stopped. "
                        f"Last good checkpoint: {self.checkpointer.last_name()}. Lower --learning-rate, use "
                        "--mixed-precision bf16/no, or check the data")
            history[index] = (step, sum(losses) / len(losses))
            self.trackers.scalars({"train/loss": history[index][1], "train/lr": lr}, step)
        self.pending = []
        progress.set_postfix(loss=f"{history[-1][1]:.4f}", lr=f"{lr:.2e}")

    def _finish(self, clock: RunClock) -> TrainResult:
        """EMA weights in, final grid, the artefact, the reload check and the summary (main process)."""
        cfg, acc, c, state = self.cfg, self.acc, self.components, self.state
        acc.wait_for_everyone()
        release_freed_memory()
        if self.ema is not None:
            self.ema.copy_to(trainable_named_parameters(c))
        summary: dict[str, Any] = {}
        if acc.is_main_process:
            if cfg.validation_prompts:
                self.validator.grid("final")
            restore_frozen_full_precision(c, self.method, cfg, self.weight_dtype)
            try:
                self.method.save(c, self.out, base_model=cfg.pretrained_model)
            except OSError as err:
                raise ckpt.write_failure(err, err.filename or self.out, self.checkpointer.last_name()) from err
            reload, counts = None, parameter_counts(c)
            cached, prediction_type = self.objective.cached, self.objective.prediction_type
            if cfg.final_reload_check:
                prompt, full_precision = (cfg.validation_prompts or self.data.prompts)[0], self.weight_dtype == torch.float32
                release = None if self.keep_components else self._release_trained
                if release is not None:
                    c = None  # reload_check drops its own reference before it calls release
                reload = reload_check(self.components, self.out, cfg.pretrained_model, prompt, cfg.seed, cfg.resolution,
                                      cfg.num_validation_inference_steps, acc.autocast, full_precision,
                                      load_kwargs=cfg.base_load_kwargs,
                                      compare_tensors=self.method.artefact_holds_trainable_tensors, release=release)
                reload["allowed_mismatch"] = cfg.allow_reload_mismatch and not reload["passed"]
            summary = build_summary(
                cfg, self.method, c, state, parameters=counts, num_images=len(self.data), plan=self.plan, world=self.world, precision_used=acc.mixed_precision, optimizer=self.optimizer_name,
                cached=cached, prediction_type=prediction_type,
                timing=clock.timing(state.global_step - self.start_step), device=acc.device, reload=reload,
                resumed_from=self.resume, start_step=self.start_step)
            write_summary(self.out, summary, state.loss_history)
        acc.wait_for_everyone()
        if acc.is_main_process:
            raise_on_reload_mismatch(summary["reload_check"], self.out, cfg.allow_reload_mismatch)
        return TrainResult(self.out, state.global_step, state.final_loss, list(state.loss_history), summary, self.method,
                           self.components)

    def _release_trained(self) -> None:
        """Drop every reference this run holds to the trained modules (the reload check has what it needs).

        ``free_memory()`` runs the one full ``gc.collect()`` (0.3 s with torch, diffusers and transformers
        imported: 0.5 M objects to walk) that frees them even when a reference cycle holds them.
        """
        self.components = self.objective = self.validator = self.checkpointer = self.ema = None
        self.optimizer = self.lr_scheduler = None
        self.acc.free_memory()  # clears the accelerator's lists of prepared optimizers / schedulers, after a collection
        release_freed_memory()


def train(config: TrainConfig, method: FineTuningMethod | None = None, *, keep_components: bool = True) -> TrainResult:
    """Fine-tune ``config.pretrained_model`` on ``config.dataset`` with ``config.method`` (or ``method``).

    ``keep_components=False``: the trained modules are released before the final reload check loads the
    saved artefact onto a fresh base model (one pipeline in memory, not two); ``TrainResult.components``
    is then None. The CLI does this; the default keeps them for callers that use the trained model.

    Writes into ``config.output_dir`` the method's artefact (see docs/design.md), ``checkpoint-<step>/``
    folders, ``training_summary.json``, ``loss_curve.png`` and ``validation/`` grids.
    """
    cfg = config.validate()
    check_metric_weights(cfg)
    check_output_location(cfg.output_dir, {"--dataset": cfg.dataset, "--train-data-dir": cfg.train_data_dir,
                                           "--pretrained-model": cfg.pretrained_model})
    method = resolve_method(cfg, method)
    # a process group the caller set up (a study running several stages under one `accelerate launch`) stays usable
    owns_process_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    accelerator = make_accelerator(cfg)
    lock = runs.OutputLock(cfg.output_dir, "train") if accelerator.is_main_process else None
    try:
        return _Run(cfg, accelerator, method, lock, keep_components).run()
    finally:
        if lock is not None:
            lock.release()
        if owns_process_group:
            accelerator.end_training()
        else:
            for tracker in accelerator.trackers:
                tracker.finish()
