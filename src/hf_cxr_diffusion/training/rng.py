"""Random streams of a training run, designed so that caching and resuming change nothing.

Every random draw of the diffusion objective (posterior sample, noise, noise offset, timesteps)
comes from a generator seeded by ``(seed, process index, micro-step)`` (:func:`step_generator`).
The draws of micro-step ``m`` are therefore the same whether the VAE posterior was cached or
computed on the fly, and whether the run was resumed or not, with no generator state to carry.
Everything else that is random (dropout in adapters, python/numpy users) uses the global
generators, whose states a checkpoint saves and restores (:func:`capture_rng_state`).
The data order of epoch ``e`` is a permutation seeded by ``(seed, e)`` (:func:`epoch_permutation`).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

_PRIME = 1_000_003


def _mix(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * _PRIME + int(part)) % (2**63 - 1)
    return value


def step_generator(seed: int, process_index: int, micro_step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator for all objective draws of one micro-batch."""
    return torch.Generator(device=device).manual_seed(_mix(seed, 1, process_index, micro_step))


def empty_prompt_mask(seed: int, process_index: int, micro_step: int, n: int, proportion: float) -> list[bool]:
    """Which of a micro-batch's ``n`` prompts are dropped to the empty prompt (its own stream, so other draws are unchanged)."""
    gen = torch.Generator().manual_seed(_mix(seed, 3, process_index, micro_step))
    return (torch.rand(n, generator=gen) < proportion).tolist()


def epoch_permutation(seed: int, epoch: int, n: int) -> list[int]:
    """Data order of ``epoch`` (identical on every process; each takes its own slice)."""
    gen = torch.Generator().manual_seed(_mix(seed, 2, epoch))
    return torch.randperm(n, generator=gen).tolist()


def capture_rng_state() -> dict[str, Any]:
    """Global python, numpy, torch (and CUDA) generator states."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
