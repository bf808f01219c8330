"""Shared machinery of the low-rank methods (LoRA, DoRA, SeLoRA, DyLoRA, AdaLoRA).

* the method base class :class:`LowRankMethod` (what trains follows :func:`adapted_components`);
* which layers to adapt: :func:`resolve_targets` (``"all-linear"`` or module-name suffixes, peft's
  suffix rule) and :func:`check_target_modules`;
* our own low-rank layers (SeLoRA, DyLoRA): :class:`LowRankLinear` wraps a frozen ``nn.Linear`` as
  ``base(x) + scale * B A dropout(x)`` and :func:`wrap_linear_layers` installs them;
* the one artefact format: :func:`export_lora` turns per-module factors ``(A, B, scale)`` of any
  rank into an ordinary peft LoRA (``rank_pattern`` / ``alpha_pattern`` carry per-module ranks),
  :func:`save_lora_file` writes diffusers' LoRA file (:data:`~hf_cxr_diffusion.artefacts.LORA_WEIGHTS_FILE`) WITH the adapter
  metadata (without it diffusers 0.42 assumes ``lora_alpha == r``) and :func:`load_lora_file`
  reads it back with ``pipe.load_lora_weights``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hf_cxr_diffusion.artefacts import LORA_WEIGHTS_FILE
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import atomic_path
from hf_cxr_diffusion.methods.base import FineTuningMethod

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

#: ``target_modules`` value meaning every ``nn.Linear`` of the model (peft's spelling)
ALL_LINEAR = "all-linear"
#: layer types peft's LoRA can wrap (for every target we offer)
LORA_LAYER_TYPES = (nn.Linear, nn.Conv2d)

#: ``(A [r, in], B [out, r], scale)`` of one adapted layer: its update is ``scale * B @ A``
Factors = tuple[torch.Tensor, torch.Tensor, float]


def _short_name(module_name: str) -> str:
    """``a.b.to_out.0`` -> ``to_out.0``, ``a.b.to_q`` -> ``to_q``: the name a target list uses."""
    parts = module_name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def check_target_modules(
    model: nn.Module, targets: str | list[str], what: str, layer_types: tuple[type[nn.Module], ...] = LORA_LAYER_TYPES
) -> list[str]:
    """The layer names of ``model`` that ``targets`` selects; :class:`UserError` if a target matches nothing.

    Args:
        model: the component to adapt.
        targets: :data:`ALL_LINEAR` or module-name suffixes (``"to_q"``, ``"to_out.0"``; peft's rule:
            a layer matches when its full name equals the target or ends with ``"." + target``).
        what: the option being checked, named in the error (``"selora: target_modules"``).
        layer_types: the layer types the method can wrap.

    Returns:
        Full names of the matched layers, in model order.
    """
    layers = [n for n, m in model.named_modules() if isinstance(m, layer_types)]
    if targets == ALL_LINEAR:
        found = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not found:
            raise UserError(f"{what}: {ALL_LINEAR!r} matches no nn.Linear layer of this model")
        return found
    if isinstance(targets, str) or not targets:
        raise UserError(f"{what}: give {ALL_LINEAR!r} or a non-empty list of module names, got {targets!r}")
    unknown = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in layers)]
    if unknown:
        kinds = "/".join(t.__name__ for t in layer_types)
        valid = sorted({_short_name(n) for n in layers})
        raise UserError(f"{what}: unknown target module(s) {unknown} (no {kinds} of that name); valid module names in this model: {valid}")
    pattern = re.compile(rf"(.*\.)?({'|'.join(re.escape(t) for t in targets)})")
    return [n for n in layers if pattern.fullmatch(n)]


#: the config option naming each adaptable component's target layers
TARGET_OPTIONS = {"unet": "target_modules", "text_encoder": "text_encoder_target_modules"}


def adapted_components(config: Any) -> dict[str, str | list[str]]:
    """``component -> targets`` of a low-rank method's config (fields ``target_modules``,
    ``train_text_encoder``, ``text_encoder_target_modules``): the U-Net, plus the text encoder when asked."""
    targets = {"unet": config.target_modules}
    if config.train_text_encoder:
        targets["text_encoder"] = config.text_encoder_target_modules
    return targets


class LowRankMethod(FineTuningMethod):
    """A method adapting the U-Net, and the text encoder when ``train_text_encoder`` is set, with low-rank layers."""

    def _targets(self) -> dict[str, str | list[str]]:
        return adapted_components(self.config)

    def trains(self, component: str) -> bool:
        return component in self._targets()


def resolve_targets(
    method: str, config: Any, components: Any, layer_types: tuple[type[nn.Module], ...] = LORA_LAYER_TYPES
) -> dict[str, list[str]]:
    """``component -> full names of the layers to adapt`` (:func:`check_target_modules` on each adapted component).

    Args:
        method: the method's name, for errors (``"selora: target_modules on the unet: ..."``).
        config: the method's config (see :func:`adapted_components`).
        components: the ``SDComponents`` being adapted.
        layer_types: the layer types the method can wrap.
    """
    return {
        cname: check_target_modules(getattr(components, cname), targets, f"{method}: {TARGET_OPTIONS[cname]} on the {cname}", layer_types)
        for cname, targets in adapted_components(config).items()
    }


class LowRankLinear(nn.Module):
    """``base(x) + scale * B A dropout(x)`` around a frozen ``nn.Linear``; subclasses define :meth:`factors`.

    The factors are kept in fp32 (fp64 for an fp64 base) whatever the base's dtype, so mixed
    precision trains them in full precision. ``weight`` / ``bias`` expose the base layer's, so code
    that inspects ``module.weight`` (diffusers' attention processors) keeps working.

    Args:
        base: the frozen layer being adapted.
        dropout: dropout probability on the adapter's input (identity in eval mode).
    """

    def __init__(self, base: nn.Linear, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def factor_dtype(self) -> torch.dtype:
        return torch.float64 if self.base.weight.dtype == torch.float64 else torch.float32

    def factors(self) -> Factors:
        """``(A [r, in], B [out, r], scale)`` used by the forward pass in the current mode."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        a, b, scale = self.factors()
        delta = nn.functional.linear(nn.functional.linear(self.dropout(x).to(a.dtype), a), b) * scale
        return result + delta.to(result.dtype)


def wrap_linear_layers(
    model: nn.Module, paths: list[str], make: Callable[[int, nn.Linear], LowRankLinear]
) -> dict[str, LowRankLinear]:
    """Replace each ``nn.Linear`` at ``paths`` by ``make(index, layer)``; return ``path -> new module``."""
    wrapped: dict[str, LowRankLinear] = {}
    for index, path in enumerate(paths):
        parent_name, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, child)
        if not isinstance(layer, nn.Linear):
            raise UserError(f"layer {path} is a {type(layer).__name__}; this method adapts nn.Linear layers only")
        wrapped[path] = make(index, layer)
        setattr(parent, child, wrapped[path])
    return wrapped


def adapter_metadata(config: Any) -> dict[str, Any]:
    """A peft config as a JSON-able dict (sets become sorted lists) for ``*_lora_adapter_metadata``."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: sorted(v) if isinstance(v, set) else v for k, v in data.items()}


def export_lora(factors: dict[str, Factors], dropout: float = 0.0) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An ordinary peft LoRA reproducing per-module updates ``scale * B @ A`` of any (per-module) rank.

    peft scales a module of rank ``r`` by ``lora_alpha / r``; writing ``rank_pattern[m] = r_m`` and
    ``alpha_pattern[m] = scale_m * r_m`` reproduces every module's scale exactly.

    Args:
        factors: module path (inside its component) -> ``(A [r, in], B [out, r], scale)``.
        dropout: the adapter's dropout, recorded in the metadata.

    Returns:
        The peft-format state dict (``<path>.lora_A.weight`` ...) and the adapter metadata.
    """
    from peft import LoraConfig

    if not factors:
        raise ValueError("export_lora needs at least one module")
    layers: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for path, (a, b, scale) in factors.items():
        layers[f"{path}.lora_A.weight"] = a.detach().to("cpu").contiguous()
        layers[f"{path}.lora_B.weight"] = b.detach().to("cpu").contiguous()
        ranks[path] = int(a.shape[0])
        alphas[path] = float(scale) * ranks[path]
    common = collections.Counter(ranks.values()).most_common(1)[0][0]
    common_alpha = collections.Counter(a for p, a in alphas.items() if ranks[p] == common).most_common(1)[0][0]
    config = LoraConfig(
        r=common,
        lora_alpha=common_alpha,
        lora_dropout=dropout,
        target_modules=list(ranks),
        rank_pattern=ranks,
        alpha_pattern=alphas,
    )
    return layers, adapter_metadata(config)


def save_lora_file(
    output_dir: Path,
    unet_layers: dict[str, torch.Tensor],
    unet_metadata: dict[str, Any],
    text_encoder_layers: dict[str, torch.Tensor] | None = None,
    text_encoder_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write peft-format LoRA state dicts + metadata with ``save_lora_weights`` (atomically).

    Args:
        output_dir: the training output folder; the file is :data:`LORA_WEIGHTS_FILE` in it.
        unet_layers: peft-format U-Net LoRA tensors (``<path>.lora_A.weight`` ...).
        unet_metadata: the U-Net adapter's peft config (:func:`adapter_metadata`).
        text_encoder_layers: the text encoder's tensors, or None when it has no adapter.
        text_encoder_metadata: the text encoder adapter's peft config.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    # standard layout: a channels-last U-Net (CUDA training) has channels-last conv LoRA factors
    unet_layers = {k: v.contiguous() for k, v in unet_layers.items()}
    text_encoder_layers = {k: v.contiguous() for k, v in text_encoder_layers.items()} if text_encoder_layers else None
    with atomic_path(output_dir / LORA_WEIGHTS_FILE) as tmp:
        StableDiffusionPipeline.save_lora_weights(
            tmp.parent,
            unet_lora_layers=convert_state_dict_to_diffusers(unet_layers),
            text_encoder_lora_layers=convert_state_dict_to_diffusers(text_encoder_layers) if text_encoder_layers else None,
            weight_name=tmp.name,
            unet_lora_adapter_metadata=unet_metadata,
            text_encoder_lora_adapter_metadata=text_encoder_metadata if text_encoder_layers else None,
        )
    return output_dir / LORA_WEIGHTS_FILE


def _restore_text_encoder_magnitudes(pipe: DiffusionPipeline, path: Path, adapters_before: set[str]) -> None:
    """Copy DoRA magnitude vectors of the text encoder, which ``load_lora_weights`` drops.

    diffusers 0.42.1 + transformers 5 load the text encoder's ``…lora_magnitude_vector`` under a
    key without peft's ``.weight`` suffix, report them as unexpected and leave the freshly
    initialised magnitudes in place (the U-Net's load correctly). We copy them from the file.
    """
    from safetensors import safe_open

    prefix, suffix = "text_encoder.", ".lora_magnitude_vector"
    te = getattr(pipe, "text_encoder", None)
    with safe_open(str(path / LORA_WEIGHTS_FILE), "pt") as fh:
        keys = [k for k in fh.keys() if k.startswith(prefix) and k.endswith(suffix)]
        if not keys or te is None:
            return
        (adapter,) = set(te.peft_config) - adapters_before
        with torch.no_grad():
            for key in keys:
                target = te.get_submodule(key[len(prefix) :])[adapter].weight
                target.copy_(fh.get_tensor(key).to(device=target.device, dtype=target.dtype))


class _NoTextEncoderKeys(logging.Filter):
    """diffusers' "No LoRA keys associated to CLIPTextModel" warning, for a file known to hold no text-encoder keys.

    diffusers says itself that the message "is safe to ignore if LoRA state dict didn't originally have any
    CLIPTextModel related params"; :func:`load_lora_file` installs this filter only for such files.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No LoRA keys associated to CLIPTextModel")


@contextlib.contextmanager
def _quiet_if_unet_only(path: Path) -> Iterator[None]:
    from safetensors import safe_open

    with safe_open(str(path / LORA_WEIGHTS_FILE), "pt") as fh:
        unet_only = not any(k.startswith("text_encoder.") for k in fh.keys())
    if not unet_only:
        yield
        return
    logger, quiet = logging.getLogger("diffusers.loaders.lora_base"), _NoTextEncoderKeys()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def load_lora_file(pipe: DiffusionPipeline, path: Path, method: str) -> DiffusionPipeline:
    """``pipe.load_lora_weights(path)`` (+ the DoRA text-encoder fix) with a UserError naming adapter and base on mismatch."""
    base = getattr(getattr(pipe, "config", None), "_name_or_path", None) or type(pipe).__name__
    before = set(getattr(getattr(pipe, "text_encoder", None), "peft_config", None) or {})
    unet_before = set(getattr(pipe.unet, "peft_config", None) or {})
    try:
        with _quiet_if_unet_only(path):
            pipe.load_lora_weights(str(path))
        _restore_text_encoder_magnitudes(pipe, path, before)
    except (ValueError, RuntimeError, KeyError, AttributeError) as err:
        raise UserError(f"{method} adapter {path} does not fit base model {base}: {err}") from err
    loaded = set(getattr(pipe.unet, "peft_config", None) or {}) - unet_before
    loaded |= set(getattr(getattr(pipe, "text_encoder", None), "peft_config", None) or {}) - before
    if not loaded:
        raise UserError(f"{method} adapter {path} does not fit base model {base}: none of its LoRA keys match its modules")
    return pipe
