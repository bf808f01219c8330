"""The loss of one micro-batch: latent diffusion (Rombach et al. 2022) + DreamBooth prior + method terms.

:class:`Objective` owns what the loss needs besides the trained weights: the training examples,
the frozen encoders' caches (:mod:`.caching`), the noise scheduler and the step generators
(:mod:`.rng`). Cached and uncached paths make the same random draws, so caching never changes the
maths. The loss of micro-batch ``m`` is

    mean(instance losses) + prior_loss_weight * mean(prior losses) + method.auxiliary_loss(...)

with ``--proportion-empty-prompts`` of the instance prompts replaced by the empty prompt; the prior
part exists with DreamBooth prior preservation (:mod:`.dreambooth`); the method's auxiliary term gets
the VAE's inputs and posterior draws only when the VAE trains (its posterior is then never cached).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hf_cxr_diffusion.methods.base import FineTuningMethod
from hf_cxr_diffusion.training.caching import LatentCache, TextEmbeddingCache, encode_posterior, encode_prompts
from hf_cxr_diffusion.training.config import TrainConfig
from hf_cxr_diffusion.training.data import ImagePromptData, tokenize
from hf_cxr_diffusion.training.loss import noisy_inputs, per_sample_loss, target_for
from hf_cxr_diffusion.training.rng import empty_prompt_mask, step_generator


@dataclasses.dataclass
class MicroBatchLoss:
    """Parts of one micro-batch's loss: per-sample instance (and prior) losses, the method's extra term."""

    instance: torch.Tensor
    prior: torch.Tensor | None = None
    auxiliary: torch.Tensor | None = None

    def total(self, prior_loss_weight: float) -> torch.Tensor:
        loss = self.instance.mean()
        if self.prior is not None:
            loss = loss + prior_loss_weight * self.prior.mean()
        return loss if self.auxiliary is None else loss + self.auxiliary


class Objective:
    """Computes :class:`MicroBatchLoss` for ``(indices, micro_step)``; see the module docstring.

    Args:
        cfg: the run's configuration (seed, objective options, caching, batch size).
        method: the fine-tuning method (what trains decides what may be cached).
        components: the ``SDComponents`` being trained.
        data: the training examples.
        class_data: DreamBooth class examples, or None.
        unet_forward: the U-Net's forward (the compiled one with ``--torch-compile``).
        autocast: the accelerator's autocast context factory.
        rank: this process's index (seeds the step generators).
        show_progress: show the caching progress bar.
    """

    def __init__(self, cfg: TrainConfig, method: FineTuningMethod, components: Any, data: ImagePromptData,
                 class_data: Any | None, unet_forward: Callable, autocast: Callable, rank: int, show_progress: bool) -> None:
        self.cfg, self.method, self.components = cfg, method, components
        self.data, self.class_data = data, class_data
        self.unet_forward, self.autocast, self.rank = unet_forward, autocast, rank
        self.scheduler = components.noise_scheduler
        self.prediction_type: str = self.scheduler.config.prediction_type
        self.device = components.unet.device
        self.latent_cache = self.class_cache = self.text_cache = None
        if cfg.cache_latents:
            self._build_caches(show_progress)

    def _build_caches(self, show_progress: bool) -> None:
        c, bs = self.components, self.cfg.train_batch_size
        if not self.method.trains("vae"):
            self.latent_cache = LatentCache(c.vae, self.data.pixels, len(self.data), bs, self.autocast, show_progress)
            if self.class_data is not None:
                self.class_cache = LatentCache(c.vae, self.class_data.pixels, len(self.class_data), bs, self.autocast,
                                               show_progress)
        if not self.method.trains("text_encoder"):
            prompts = self.data.prompts + ([self.class_data.prompt] if self.class_data is not None else [])
            prompts += [""] if self.cfg.proportion_empty_prompts else []
            self.text_cache = TextEmbeddingCache(c.text_encoder, lambda p: tokenize(c.tokenizer, p), prompts, bs, self.autocast)

    @property
    def cached(self) -> dict[str, bool]:
        return {"latents": self.latent_cache is not None, "text_embeddings": self.text_cache is not None}

    def _posterior(self, indices: Sequence[int], cache: LatentCache | None,
                   pixels: Callable) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Posterior mean and std (fp32), and the encoded pixels when not cached."""
        if cache is not None:
            mean, std = cache.get(indices)
            return mean.float(), std.float(), None
        images = pixels(indices)
        with torch.set_grad_enabled(self.method.trains("vae")), self.autocast():
            mean, std = encode_posterior(self.components.vae, images)
        return mean.float(), std.float(), images

    def _text(self, prompts: Sequence[str]) -> torch.Tensor:
        if self.text_cache is not None:
            return self.text_cache.get(prompts)
        c = self.components
        with torch.set_grad_enabled(self.method.trains("text_encoder")), self.autocast():
            return encode_prompts(c.text_encoder, tokenize(c.tokenizer, prompts))

    def losses(self, indices: Sequence[int], micro_step: int, auxiliary: bool = True) -> MicroBatchLoss:
        """The parts of the loss of one micro-batch; all its random draws come from the micro-step's generator."""
        cfg, c = self.cfg, self.components
        mean, std, pixels = self._posterior(indices, self.latent_cache, self.data.pixels)
        prompts = [self.data.prompts[i] for i in indices]
        if cfg.proportion_empty_prompts:  # caption dropout (Ho & Salimans 2022), its own random stream
            mask = empty_prompt_mask(cfg.seed, self.rank, micro_step, len(prompts), cfg.proportion_empty_prompts)
            prompts = ["" if drop else p for p, drop in zip(prompts, mask)]
        if self.class_data is not None:
            class_indices = [i % len(self.class_data) for i in indices]
            cmean, cstd, cpixels = self._posterior(class_indices, self.class_cache, self.class_data.pixels)
            mean, std = torch.cat([mean, cmean]), torch.cat([std, cstd])
            pixels = None if pixels is None else torch.cat([pixels, cpixels])
            prompts = prompts + [self.class_data.prompt] * len(indices)
        hidden = self._text(prompts)
        gen = step_generator(cfg.seed, self.rank, micro_step, self.device)
        batch = noisy_inputs(mean, std, c.vae.config.scaling_factor, self.scheduler, gen, cfg.noise_offset)
        with self.autocast():
            pred = self.unet_forward(batch.noisy_latents, batch.timesteps, hidden, return_dict=False)[0]
        losses = per_sample_loss(pred, target_for(self.scheduler, batch, self.prediction_type), self.scheduler,
                                 batch.timesteps, self.prediction_type, cfg.snr_gamma)
        out = MicroBatchLoss(*losses.chunk(2)) if self.class_data is not None else MicroBatchLoss(losses)
        if auxiliary:
            vae = self.method.trains("vae")
            with self.autocast():
                extra = self.method.auxiliary_loss(c, pixels if vae else None, batch.sample if vae else None)
            out.auxiliary = None if extra is None else extra.float()
        return out

    def loss(self, indices: Sequence[int], micro_step: int) -> torch.Tensor:
        """The scalar loss of one micro-batch (what the loop back-propagates)."""
        return self.losses(indices, micro_step).total(self.cfg.prior_loss_weight)
