"""Exponential moving average of the trainable weights (Polyak averaging), keyed by parameter name.

The decay warms up as ``min(max_decay, (1 + n) / (10 + n))`` (as diffusers' ``EMAModel``), so
early averages are not dominated by the initial weights. Keying by name lets methods that grow
parameters during training (SeLoRA) work: a new or reshaped parameter starts its average anew.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class EMA:
    def __init__(self, named_params: dict[str, torch.nn.Parameter], max_decay: float = 0.9999) -> None:
        self.max_decay = max_decay
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {n: p.detach().float().clone() for n, p in named_params.items()}

    def decay(self) -> float:
        return min(self.max_decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, named_params: dict[str, torch.nn.Parameter]) -> None:
        decay = self.decay()
        self.num_updates += 1
        for name, param in named_params.items():
            shadow = self.shadow.get(name)
            if shadow is None or shadow.shape != param.shape:
                self.shadow[name] = param.detach().float().clone()
            else:
                shadow.lerp_(param.detach().float(), 1.0 - decay)
        for name in set(self.shadow) - set(named_params):
            del self.shadow[name]

    @torch.no_grad()
    def copy_to(self, named_params: dict[str, torch.nn.Parameter]) -> None:
        for name, param in named_params.items():
            if name in self.shadow and self.shadow[name].shape == param.shape:
                param.copy_(self.shadow[name].to(param.dtype))

    @contextlib.contextmanager
    def swapped_in(self, named_params: dict[str, torch.nn.Parameter]) -> Iterator[None]:
        """Temporarily put the averaged weights into the model (for validation)."""
        backup = {n: p.detach().clone() for n, p in named_params.items()}
        self.copy_to(named_params)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in named_params.items():
                    param.copy_(backup[name])

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates, "max_decay": self.max_decay, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        self.num_updates = int(state["num_updates"])
        self.max_decay = float(state["max_decay"])
        self.shadow = {n: t.float().clone() for n, t in state["shadow"].items()}
