"""Shared toy models of the method tests: one zero-initialised ``to_q`` layer standing in for a U-Net."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn


class ToyUNet(nn.Module):
    """``to_q``: a bias-free ``nn.Linear(12, 10)`` with zero weights (so the adapter alone gives the output)."""

    def __init__(self) -> None:
        super().__init__()
        self.to_q = nn.Linear(12, 10, bias=False)
        nn.init.zeros_(self.to_q.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_q(x)


def toy_components() -> SimpleNamespace:
    """An ``SDComponents`` stand-in: the toy U-Net, identity text encoder and VAE."""
    return SimpleNamespace(unet=ToyUNet(), text_encoder=nn.Identity(), vae=nn.Identity())
