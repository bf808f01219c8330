"""The denoising objective: posterior sampling, noising, targets, min-SNR weighting, noise offset.

* epsilon and v-prediction targets (Salimans & Ho 2022, "Progressive distillation");
* min-SNR-gamma weighting (Hang et al. 2023, "Efficient diffusion training via Min-SNR weighting
  strategy"): weight ``min(SNR, gamma) / SNR`` for epsilon, ``min(SNR, gamma) / (SNR + 1)`` for v;
* noise offset (Guttenberg 2023, "Diffusion with offset noise"): ``noise += offset * N(0, 1)`` per
  sample and channel.

All draws for one micro-batch come from one generator, in a fixed order: posterior, noise,
offset, timesteps. The cached and uncached paths call :func:`noisy_inputs` identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from hf_cxr_diffusion.errors import UserError


class NonFiniteLossError(UserError):
    """The loss (or a trainable tensor) became NaN/inf; training stopped, the last good checkpoint is kept."""


def sample_posterior(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A draw of the VAE posterior ``N(mean, std^2)`` (as ``DiagonalGaussianDistribution.sample``)."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * eps


@dataclass
class NoisyBatch:
    """One micro-batch's draws: ``sample`` (unscaled posterior draw), ``latents`` (= sample x scaling factor)."""

    sample: torch.Tensor
    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    noisy_latents: torch.Tensor


def noisy_inputs(
    mean: torch.Tensor,
    std: torch.Tensor,
    scaling_factor: float,
    scheduler: DDPMScheduler,
    generator: torch.Generator,
    noise_offset: float = 0.0,
) -> NoisyBatch:
    """Sample latents from the posterior, scale them, add noise at random timesteps."""
    sample = sample_posterior(mean, std, generator)
    latents = sample * scaling_factor
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset:
        offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator, device=latents.device)
        noise = noise + noise_offset * offset.to(latents.dtype)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=latents.device
    ).long()
    return NoisyBatch(sample, latents, noise, timesteps, scheduler.add_noise(latents, noise, timesteps))


def set_prediction_type(scheduler: DDPMScheduler, prediction_type: str | None) -> str:
    """Override the training target of ``scheduler`` (None keeps the base model's); return the one in use."""
    if prediction_type is not None:
        scheduler.register_to_config(prediction_type=prediction_type)
    return scheduler.config.prediction_type


def target_for(scheduler: DDPMScheduler, batch: NoisyBatch, prediction_type: str) -> torch.Tensor:
    if prediction_type == "epsilon":
        return batch.noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(batch.latents, batch.noise, batch.timesteps)
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def snr(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``alpha_bar / (1 - alpha_bar)`` at ``timesteps``."""
    alphas_cumprod = scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[timesteps]
    return alphas_cumprod / (1.0 - alphas_cumprod)


def per_sample_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    scheduler: DDPMScheduler,
    timesteps: torch.Tensor,
    prediction_type: str,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """Mean squared error per sample (fp32), min-SNR weighted when ``snr_gamma`` is set."""
    mse = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=list(range(1, model_pred.ndim)))
    if snr_gamma is None:
        return mse
    ratio = snr(scheduler, timesteps)
    clipped = torch.clamp(ratio, max=snr_gamma)
    weights = clipped / (ratio + 1.0) if prediction_type == "v_prediction" else clipped / ratio
    return mse * weights
