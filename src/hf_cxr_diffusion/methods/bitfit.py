"""BitFit: train only the bias terms (Ben Zaken, Goldberg and Ravfogel 2021, "BitFit: Simple
Parameter-efficient Fine-tuning for Transformer-based Masked Language-models").

Every parameter named ``bias`` of the configured components trains (convolutions, linear layers
and the normalisation layers' shifts, as in the paper, which includes LayerNorm biases); the
artefact is :data:`~hf_cxr_diffusion.artefacts.ADAPTER_FILE` with those tensors only.
"""

from __future__ import annotations

import dataclasses

import torch

from hf_cxr_diffusion.methods.partial import PartialConfig, PartialTuning


@dataclasses.dataclass
class BitFitConfig(PartialConfig):
    """Options of :class:`BitFit` (Ben Zaken et al. 2021).

    Args:
        components: where every ``bias`` trains, a non-empty subset of unet, text_encoder, vae (default the U-Net).
    """


class BitFit(PartialTuning):
    """Bias-only fine-tuning."""

    name = "bitfit"
    config_class = BitFitConfig

    def selects(self, module: torch.nn.Module, param_name: str) -> bool:
        return param_name == "bias"
