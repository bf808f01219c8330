"""What a SeLoRA checkpoint adds to the trainable tensors: every module's rank and the rank history.

Both travel as int64 tensors inside the method's trainable state dict (so the trainer's safetensors
checkpoint holds them, no pickle): ``selora.ranks`` ``[n_modules]`` and ``selora.rank_history``
``[n_checks, 1 + n_modules]`` (the step, then every module's rank, in module order).
"""

from __future__ import annotations

from typing import Any

import torch

from hf_cxr_diffusion.errors import UserError

RANKS_KEY = "selora.ranks"
HISTORY_KEY = "selora.rank_history"


def encode_ranks(ranks: dict[str, int], history: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The two int64 tensors recording ``ranks`` (module -> rank) and ``history`` (``[{"step", "ranks"}]``)."""
    rows = [[h["step"], *(h["ranks"][name] for name in ranks)] for h in history]
    return {
        RANKS_KEY: torch.tensor(list(ranks.values()), dtype=torch.int64),
        HISTORY_KEY: torch.tensor(rows, dtype=torch.int64).reshape(len(history), 1 + len(ranks)),
    }


def decode_ranks(state: dict[str, torch.Tensor], names: list[str]) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Pop and decode the tensors of :func:`encode_ranks` from ``state`` for modules ``names``; UserError if they do not fit."""
    ranks, history = state.pop(RANKS_KEY, None), state.pop(HISTORY_KEY, None)
    if ranks is None or history is None or len(ranks) != len(names) or history.shape[1] != 1 + len(names):
        found = "no" if ranks is None else len(ranks)
        raise UserError(f"selora checkpoint does not fit: it records {found} module ranks, this model has {len(names)} SeLoRA modules")
    decoded = [{"step": int(row[0]), "ranks": dict(zip(names, map(int, row[1:]), strict=True))} for row in history.tolist()]
    return dict(zip(names, map(int, ranks.tolist()), strict=True)), decoded
