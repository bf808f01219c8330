"""Collectives of a multi-process run (``accelerate launch``): every helper is a no-op with one process.

The trainer does not wrap models in DDP: methods may add trainable tensors during training
(SeLoRA), so gradients of every trainable tensor are averaged by one flat all-reduce before each
optimizer step, and the trainable weights start from rank 0's values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def _dist():
    import torch.distributed as dist

    return dist


def average_gradients(params: Sequence[torch.nn.Parameter], world: int) -> None:
    """Replace each ``p.grad`` by its mean over the ``world`` processes (one flat all-reduce)."""
    grads = [p.grad for p in params if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    _dist().all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


@torch.no_grad()
def broadcast_from_main(params: Sequence[torch.nn.Parameter], world: int) -> None:
    """Give every process rank 0's values of ``params``."""
    if world == 1:
        return
    for p in params:
        _dist().broadcast(p.data, src=0)


def numel_range(params: Sequence[torch.nn.Parameter], world: int, device: torch.device) -> tuple[int, int]:
    """``(min, max)`` over the processes of the number of values in ``params``."""
    n = sum(p.numel() for p in params)
    if world == 1:
        return n, n
    dist = _dist()
    t = torch.tensor([n, -n], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(-t[1].item()), int(t[0].item())


def mean_over_processes(values: torch.Tensor, world: int) -> list[float]:
    """Host floats of the element-wise mean of ``values`` over the processes (one all-reduce, one device-to-host copy)."""
    t = values.detach().to(torch.float64)
    if world == 1:
        return t.tolist()
    _dist().all_reduce(t)
    return [v / world for v in t.tolist()]


def broadcast_value(value: Any, world: int) -> Any:
    """Rank 0's (picklable, in-memory) ``value`` on every process (for decisions taken on the main process)."""
    if world == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def broadcast_flag(flag: bool, world: int) -> bool:
    """Rank 0's ``flag`` on every process."""
    return bool(broadcast_value(flag, world))
