"""DiffFit for Stable Diffusion (Xie et al. 2023, "DiffFit: Unlocking transferability of large
diffusion models via simple parameter-efficient fine-tuning").

DiffFit fine-tunes a DiT by training only (1) the bias terms, (2) the affine parameters of the
normalisation layers and (3) new learnable scale factors gamma, initialised to 1, that multiply
the residual branches of every block (``x = x + gamma * Attn(x)``, ``x = x + gamma * MLP(x)``).
Everything else stays frozen. This module is a faithful adaptation to a U-Net (and, on request,
the CLIP text encoder / VAE); it does NOT add a dense delta to every weight (a bug of the public
CheXpert paradigm-study code, which trains as many parameters as full fine-tuning).

What trains, in each configured component:

* every parameter named ``bias``;
* ``weight`` and ``bias`` of every ``GroupNorm`` and ``LayerNorm``;
* one gamma vector (one value per output channel, initialised to 1) per residual branch:

  - ``ResnetBlock2D`` (U-Net down/mid/up blocks, VAE): the residual branch ends at ``conv2``, so
    ``conv2``'s output is scaled: ``out = (shortcut(x) + gamma * conv2(...)) / output_scale_factor``;
  - ``BasicTransformerBlock`` (inside every ``Transformer2DModel`` of the U-Net): the outputs of
    ``attn1`` (self-attention), ``attn2`` (cross-attention) and ``ff`` (feed-forward), i.e. the three
    branches added to the residual stream, exactly DiffFit's per-block attention / MLP gammas;
  - ``CLIPEncoderLayer`` (text encoder): the outputs of ``self_attn`` and ``mlp``.

The gammas live in small :class:`DiffFitScale` modules registered as a child ``difffit_scale`` of
the scaled module and applied by a forward hook, so the pretrained parameter names are unchanged
and the gammas move with the model (``.to``, DDP, state dicts). At initialisation gamma = 1 and
``y * 1.0 == y`` exactly, so the model's output equals the base model's bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from hf_cxr_diffusion.methods.partial import PartialConfig, PartialTuning

SCALE_NAME = "difffit_scale"


@dataclasses.dataclass
class DiffFitConfig(PartialConfig):
    """Options of :class:`DiffFit` (Xie et al. 2023, section 3.2).

    Args:
        components: where biases, norm affines and per-branch gammas train, a non-empty subset of
            unet, text_encoder, vae (default the U-Net, as in the paradigm study).
    """


class DiffFitScale(nn.Module):
    """A learnable per-channel scale ``gamma`` (init 1) for a residual branch output."""

    def __init__(self, channels: int, *, spatial: bool, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.spatial = spatial
        self.gamma = nn.Parameter(torch.ones(channels, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = self.gamma.to(x.dtype)
        return x * (gamma.view(-1, 1, 1) if self.spatial else gamma)


def _scale_hook(module: nn.Module, args: Any, output: Any) -> Any:
    scale = getattr(module, SCALE_NAME)
    if isinstance(output, tuple):
        return (scale(output[0]), *output[1:])
    return scale(output)


def _last_projection(module: nn.Module) -> nn.Linear | nn.Conv2d:
    layers = [m for m in module.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    return layers[-1]


def residual_branches(model: nn.Module) -> list[nn.Module]:
    """The modules whose output DiffFit scales (see the module docstring), in model order."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    branches: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, ResnetBlock2D):
            branches.append(module.conv2)
        elif isinstance(module, BasicTransformerBlock):
            branches += [m for m in (module.attn1, module.attn2, module.ff) if m is not None]
        elif isinstance(module, CLIPEncoderLayer):
            branches += [module.self_attn, module.mlp]
    return branches


class DiffFit(PartialTuning):
    """Biases + norm affine parameters + per-branch scale factors gamma (init 1)."""

    name = "difffit"
    config_class = DiffFitConfig

    def install(self, model: nn.Module) -> None:
        for branch in residual_branches(model):
            if hasattr(branch, SCALE_NAME):
                continue
            proj = _last_projection(branch)
            channels = proj.out_channels if isinstance(proj, nn.Conv2d) else proj.out_features
            branch.add_module(
                SCALE_NAME,
                DiffFitScale(channels, spatial=isinstance(proj, nn.Conv2d), dtype=proj.weight.dtype, device=proj.weight.device),
            )
            branch.register_forward_hook(_scale_hook)

    def selects(self, module: nn.Module, param_name: str) -> bool:
        return (
            param_name == "bias"
            or isinstance(module, DiffFitScale)
            or (isinstance(module, nn.GroupNorm | nn.LayerNorm) and param_name == "weight")
        )
