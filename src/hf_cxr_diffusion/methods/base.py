"""The fine-tuning method interface, modelled on peft's tuners.

A method is one module in this package holding a ``@dataclass`` config (a subclass of
:class:`MethodConfig`, every field with ``metadata={"help": ...}``) and a subclass of
:class:`FineTuningMethod`; one line in :mod:`hf_cxr_diffusion.methods.registry` registers it.

The trainer only talks to methods through this interface:

1. ``method.apply(components)`` freezes everything, then injects adapters / unfreezes what trains;
2. ``method.param_groups(components, lr)`` gives the optimizer groups (trainable params, fp32);
3. ``method.trains(name)`` says whether ``"unet"``, ``"text_encoder"`` or ``"vae"`` has trainable
   parameters (a frozen VAE / text encoder lets the trainer cache latents / embeddings);
4. ``method.after_optimizer_step(step, components, optimizer, loss_fn)`` is a hook for methods
   that change shape during training (SeLoRA's expansion, which appends NEW parameters to the
   optimizer's existing param group: a trainer that clips gradients or keeps an EMA must re-read
   ``optimizer.param_groups`` rather than cache the parameter list); it runs after ``optimizer.step()``
   and before ``zero_grad``, so ``.grad`` still holds the step's gradients (AdaLoRA's sensitivities;
   ``method.begin_training(total_steps)`` runs once before the loop). ``loss_fn()`` recomputes the
   per-sample losses ``[batch]`` of the step's last micro-batch (the instance part, without a
   DreamBooth prior or auxiliary term), with the same random draws;
   ``method.auxiliary_loss(components, pixels, latents)`` may add a scalar to the loss of every
   micro-batch (a VAE reconstruction term, AdaLoRA's orthogonality regulariser); ``pixels`` and
   ``latents`` are given only while the VAE trains, else None;
5. ``method.trainable_state_dict(components)`` / ``load_trainable_state_dict`` are what checkpoints
   store (only what trains, plus whatever shape information a resume needs; call
   ``load_trainable_state_dict`` BEFORE building the optimizer, it may grow SeLoRA modules);
6. ``method.save(components, output_dir, base_model=...)`` writes the final artefact into
   ``output_dir`` and the metadata file :data:`~hf_cxr_diffusion.artefacts.METHOD_FILE`;
   ``load_adapter(pipe, output_dir)`` (:mod:`hf_cxr_diffusion.methods.loading`) reads it back onto a base pipeline through
   ``method.load_saved(pipe, output_dir)``.
"""

from __future__ import annotations

import abc
import dataclasses
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch

from hf_cxr_diffusion import artefacts
from hf_cxr_diffusion.artefacts import ArtefactKind
from hf_cxr_diffusion.errors import UserError

COMPONENTS: tuple[str, ...] = ("unet", "text_encoder", "vae")


@dataclasses.dataclass
class MethodConfig:
    """Base class of every method's config; fields carry ``metadata={"help": ...}``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        """Build from options; a string given to a list option is a comma list (``components=vae,text_encoder``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"unknown option(s) {unknown} for {cls.__name__}; valid: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _comma_list(v, hints[k]) for k, v in data.items()})

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text, for ``--help`` and the README table."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _comma_list(value: Any, annotation: Any) -> Any:
    """``"a,b"`` -> ``["a", "b"]`` for a list option (also ``"a"`` when the option takes only lists)."""
    if not isinstance(value, str):
        return value
    kinds = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    takes_list = any((typing.get_origin(k) or k) in (list, tuple) for k in kinds)
    if not takes_list or (str in kinds and "," not in value):
        return value
    return [part.strip() for part in value.split(",") if part.strip()]


def check_components(names: list[str], option: str) -> list[str]:
    """Validate a non-empty subset of :data:`COMPONENTS` given as config option ``option``."""
    bad = [n for n in names if n not in COMPONENTS]
    if not names or bad:
        raise UserError(f"{option} must be a non-empty subset of {list(COMPONENTS)}; got {names}")
    return list(dict.fromkeys(names))


def iter_components(components: Any) -> Iterator[tuple[str, torch.nn.Module]]:
    """``(name, module)`` for the U-Net, text encoder and VAE of an ``SDComponents``."""
    for name in COMPONENTS:
        yield name, getattr(components, name)


def freeze_all(components: Any) -> None:
    """Set ``requires_grad=False`` on every parameter of every component."""
    for _, module in iter_components(components):
        module.requires_grad_(False)


def count_parameters(components: Any) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts over all components."""
    trainable = total = 0
    for _, module in iter_components(components):
        for p in module.parameters():
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def trainable_named_parameters(components: Any) -> dict[str, torch.nn.Parameter]:
    """Trainable parameters keyed ``"<component>.<parameter name>"``."""
    return {
        f"{cname}.{pname}": p
        for cname, module in iter_components(components)
        for pname, p in module.named_parameters()
        if p.requires_grad
    }


class FineTuningMethod(abc.ABC):
    """One way of choosing and shaping the trainable parameters of a Stable Diffusion model."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]
    #: what :meth:`save` writes, recorded as ``"format"`` in :data:`~hf_cxr_diffusion.artefacts.METHOD_FILE`
    save_format: ClassVar[ArtefactKind | str]
    #: whether :meth:`save` stores every trainable tensor unchanged (the final reload check then compares them bit for bit)
    artefact_holds_trainable_tensors: ClassVar[bool] = False

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()

    @abc.abstractmethod
    def apply(self, components: Any) -> None:
        """Freeze all of ``components`` (an ``SDComponents``), then make this method's parameters trainable."""

    @abc.abstractmethod
    def trains(self, component: str) -> bool:
        """Whether ``component`` (one of :data:`COMPONENTS`) has trainable parameters."""

    def param_groups(self, components: Any, learning_rate: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; default: every trainable parameter at ``learning_rate``."""
        return [{"params": list(trainable_named_parameters(components).values()), "lr": learning_rate}]

    def begin_training(self, total_steps: int) -> None:
        """Hook run once before the first optimizer step (also on resume) with the run's number of steps.

        Default: nothing. AdaLoRA uses it for its pruning schedule.

        Args:
            total_steps: optimizer steps of the whole run (not only of this session when resuming).
        """

    def after_optimizer_step(
        self, step: int, components: Any, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]
    ) -> None:
        """Hook run after each optimizer step (``step`` counts from 1). Default: nothing."""

    def auxiliary_loss(self, components: Any, pixels: torch.Tensor | None, latents: torch.Tensor | None) -> torch.Tensor | None:
        """An extra scalar added to the loss of every micro-batch. Default: None (nothing).

        Args:
            components: the ``SDComponents`` being trained.
            pixels: while :meth:`trains` ``("vae")`` (the VAE posterior is then never cached), the
                micro-batch's VAE input images in ``[-1, 1]``, ``[batch, 3, H, W]`` (DreamBooth class images
                appended after the instance images); else None.
            latents: while the VAE trains, the posterior draws (unscaled: before ``vae.config.scaling_factor``)
                that the diffusion loss of this micro-batch used, ``[batch, 4, H/8, W/8]``, differentiable
                through the encoder; else None.
        """
        return None

    def trainable_state_dict(self, components: Any) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: the trainable tensors keyed ``"<component>.<parameter name>"``."""
        return {k: p.detach().clone() for k, p in trainable_named_parameters(components).items()}

    def load_trainable_state_dict(self, components: Any, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`trainable_state_dict` onto ``components`` after :meth:`apply`."""
        copy_into(trainable_named_parameters(components), state, what=f"{self.name} checkpoint")

    @abc.abstractmethod
    def save(self, components: Any, output_dir: str | Path, *, base_model: str) -> Path:
        """Write the final artefact and :data:`~hf_cxr_diffusion.artefacts.METHOD_FILE` into ``output_dir``; return it."""

    @abc.abstractmethod
    def load_saved(self, pipe: Any, path: Path) -> Any:
        """Apply the artefact :meth:`save` wrote in ``path`` onto base pipeline ``pipe``; return the pipeline."""

    def write_method_file(self, components: Any, output_dir: str | Path, *, base_model: str) -> Path:
        """Write :data:`~hf_cxr_diffusion.artefacts.METHOD_FILE` (atomically): this method's artefact in ``output_dir``."""
        trainable, total = count_parameters(components)
        return artefacts.write_method_file(
            output_dir, method=self.name, config=self.config.to_dict(), base_model=base_model, kind=self.save_format,
            trainable_parameters=trainable, total_parameters=total,
        )


def copy_into(params: dict[str, torch.Tensor], state: dict[str, torch.Tensor], *, what: str) -> None:
    """Copy ``state`` into ``params`` in place; the keys and shapes must match exactly (else UserError)."""
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise UserError(
            f"{what} does not fit this model: {len(missing)} tensor(s) missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); was it made with another method config or base model?"
        )
    for key, p in params.items():
        value = state[key]
        if tuple(value.shape) != tuple(p.shape):
            raise UserError(f"{what}: tensor {key} has shape {tuple(value.shape)}, the model expects {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(value.to(device=p.device, dtype=p.dtype))
