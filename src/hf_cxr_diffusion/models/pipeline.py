"""The one way to build a sampling pipeline: :func:`build_pipeline`.

Every stage that draws images builds its pipeline here: generation (base model + training output
folder), validation during training and DreamBooth's class images (the components being trained,
shared, not copied) and the final reload check (base model + the saved artefact, through the one
adapter loader :func:`hf_cxr_diffusion.methods.loading.load_adapter`).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from hf_cxr_diffusion.artefacts import TrainingOutput, read_training_output
from hf_cxr_diffusion.errors import UserError

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

    from hf_cxr_diffusion.models.loading import SDComponents

logger = logging.getLogger(__name__)

#: ``--scheduler`` names -> diffusers scheduler classes
SCHEDULERS: dict[str, str] = {
    "dpm": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "ddpm": "DDPMScheduler",
}


def _scheduler(choice: str | Any, config: Any) -> Any:
    """A scheduler instance: ``choice`` itself, or the :data:`SCHEDULERS` class named ``choice`` on ``config``."""
    import diffusers

    if not isinstance(choice, str):
        return choice
    return getattr(diffusers, SCHEDULERS[choice]).from_config(config)


def _from_components(components: SDComponents, scheduler: str | Any | None) -> StableDiffusionPipeline:
    from diffusers import StableDiffusionPipeline

    config = components.noise_scheduler.config
    return StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=_scheduler("ddim" if scheduler is None else scheduler, config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _from_folders(base: str | os.PathLike, adapter: TrainingOutput | None, dtype: Any,
                  load_kwargs: dict[str, Any] | None = None) -> Any:
    from hf_cxr_diffusion.methods.loading import load_adapter
    from hf_cxr_diffusion.models.loading import load_pipeline

    source = adapter.path if adapter is not None and not adapter.is_adapter else base
    extra = (load_kwargs or {}) if source is base else {}  # revision / variant of the base model only
    pipe = load_pipeline(source, dtype=dtype, safety_checker=None, requires_safety_checker=False, **extra)
    if adapter is None or not adapter.is_adapter:
        return pipe
    if adapter.base_model and str(adapter.base_model) != str(base):
        logger.warning("adapter %s was trained on %s, applying it to %s", adapter.path, adapter.base_model, base)
    try:
        return load_adapter(pipe, adapter.path)
    except UserError as err:
        hint = f" ({adapter.base_model})" if adapter.base_model else ""
        raise UserError(f"{err}; pass the --pretrained-model it was trained on{hint}") from err


def build_pipeline(
    base: str | os.PathLike | SDComponents,
    adapter: str | os.PathLike | TrainingOutput | None = None,
    scheduler: str | Any | None = None,
    dtype: Any = None,
    device: Any = None,
    load_kwargs: dict[str, Any] | None = None,
) -> StableDiffusionPipeline:
    """A sampling pipeline, progress bar off.

    Args:
        base: a base model (folder, hub id or shipped name, loaded by ``load_pipeline``), or the
            ``SDComponents`` of a training run (the pipeline shares their modules: no copy).
        adapter: a training output folder (or its :class:`TrainingOutput`) applied with ``load_adapter``;
            a full fine-tune is loaded as the pipeline itself. Not allowed with components.
        scheduler: a :data:`SCHEDULERS` name or a scheduler instance; None keeps the loaded pipeline's
            own, or (components) DDIM on the training noise schedule.
        dtype: weights dtype of a loaded pipeline (components keep theirs).
        device: where to move the pipeline (None: leave it where it is).
        load_kwargs: ``from_pretrained`` options of a loaded base model (``revision``, ``variant``).
    """
    if isinstance(scheduler, str) and scheduler not in SCHEDULERS:
        raise UserError(f"--scheduler {scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    if isinstance(base, (str, os.PathLike)):
        info = adapter if isinstance(adapter, TrainingOutput) or adapter is None else read_training_output(
            adapter, require_method_file=False
        )
        pipe = _from_folders(base, info, dtype, load_kwargs)
        if scheduler is not None:
            pipe.scheduler = _scheduler(scheduler, pipe.scheduler.config)
    else:
        if adapter is not None:
            raise ValueError("an adapter is applied to a base model folder, not to training components")
        pipe = _from_components(base, scheduler)
    if device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe

