"""The SeLoRA layer: a LoRA whose rank grows one chunk at a time without changing its output (Eq. 2)."""

from __future__ import annotations

import torch
from torch import nn

from hf_cxr_diffusion.methods.lowrank import Factors, LowRankLinear


def row_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The CPU generator of module ``index``'s A row drawn at ``step`` (0: the initial row): identical on every process."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 100_003 + index)


class SeLoRALinear(LowRankLinear):
    """``base(x) + scale * B A dropout(x)`` with A, B stored as per-rank chunks that can grow.

    A is ``[r, in]`` (chunks ``lora_A[k]``: ``[1, in]``), B is ``[out, r]`` (chunks ``lora_B[k]``:
    ``[out, 1]``). :meth:`grow` appends a chunk (A row given, B column zero), so existing
    ``nn.Parameter`` objects, and their optimizer state, are untouched and the output is unchanged.
    While a trial runs (:meth:`begin_trial` .. :meth:`end_trial`) the forward pass includes the
    trial chunk, a random A row K with a zero B column (Eq. 2), both plain tensors requiring grad.

    Args:
        base: the frozen ``nn.Linear``.
        scale: the fixed scale of the update (``lora_alpha``; never changes with the rank).
        dropout: dropout on the adapter's input.
        kaiming_a: slope of the Kaiming-uniform init of A's rows (``torch.nn.init.kaiming_uniform_``).
        generator: the generator of the initial A row (:func:`row_generator`).
    """

    def __init__(self, base: nn.Linear, *, scale: float, dropout: float, kaiming_a: float, generator: torch.Generator) -> None:
        super().__init__(base, dropout)
        self.scale = scale
        self.kaiming_a = kaiming_a
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        self._trial: tuple[torch.Tensor, torch.Tensor] | None = None
        self.grow(self.new_row(generator))

    @property
    def rank(self) -> int:
        return len(self.lora_A)

    def new_row(self, generator: torch.Generator) -> torch.Tensor:
        """A ``[1, in]`` row drawn by ``torch.nn.init.kaiming_uniform_(a=kaiming_a)`` from ``generator`` (on CPU)."""
        row = torch.empty(1, self.base.in_features, dtype=self.factor_dtype)
        nn.init.kaiming_uniform_(row, a=self.kaiming_a, generator=generator)
        return row.to(self.base.weight.device)

    def grow(self, a_row: torch.Tensor) -> tuple[nn.Parameter, nn.Parameter]:
        """Append rank chunk (A row ``a_row``, B column zero); the output is unchanged. Return the new parameters."""
        a = nn.Parameter(a_row.detach().clone().to(device=self.base.weight.device, dtype=self.factor_dtype))
        b = nn.Parameter(torch.zeros(self.base.out_features, 1, dtype=self.factor_dtype, device=a.device))
        self.lora_A.append(a)
        self.lora_B.append(b)
        return a, b

    def factors(self) -> Factors:
        """The concatenated ``A [r, in]``, ``B [out, r]`` (with the trial chunk while a trial runs) and the scale."""
        a_parts, b_parts = list(self.lora_A), list(self.lora_B)
        if self._trial is not None:
            a_parts.append(self._trial[0])
            b_parts.append(self._trial[1])
        return torch.cat(a_parts, 0), torch.cat(b_parts, 1), self.scale

    def begin_trial(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Attach a trial expansion (random A row K, zero B column, both requiring grad) and return it."""
        a = self.new_row(generator).requires_grad_(True)
        b = torch.zeros(self.base.out_features, 1, dtype=self.factor_dtype, device=a.device, requires_grad=True)
        self._trial = (a, b)
        return a, b

    def end_trial(self) -> torch.Tensor:
        """Detach the trial expansion; return its A row (to :meth:`grow` with it if accepted)."""
        if self._trial is None:
            raise RuntimeError("end_trial() without begin_trial()")
        row = self._trial[0].detach()
        self._trial = None
        return row
