"""SeLoRA's expansion test: empirical Fisher information of the current and the trial factors (Eqs. 3-5)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from hf_cxr_diffusion.methods.selora.config import FISHER_ESTIMATES
from hf_cxr_diffusion.methods.selora.layer import SeLoRALinear


def _squared_gradient_sums(loss: torch.Tensor, params: Sequence[torch.Tensor], retain: bool) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
    zero = torch.zeros((), dtype=torch.float64)
    return [zero.to(p.device) if g is None else g.double().pow(2).sum() for g, p in zip(grads, params, strict=True)]


def fisher_scores(modules: Sequence[SeLoRALinear], losses_fn: Callable[[], torch.Tensor], estimate: str = "per_sample") -> torch.Tensor:
    """FI-Scores (Eq. 4) of every module's current factors and of its trial chunk, ``[n_modules, 2]`` (float64).

    Every module must be in a trial (:meth:`SeLoRALinear.begin_trial`). The Fisher information of
    an entry w is estimated on the batch that ``losses_fn()`` recomputes:

    * ``"per_sample"`` (Eq. 3): ``mean_i (dL_i/dw)^2`` over the per-sample losses ``L_i``; one
      backward pass per sample;
    * ``"batch_mean"``: ``(d mean_i L_i / dw)^2``, the squared gradient of the batch-mean loss (what
      the reference copies of the official code compute); one backward pass.

    The trial chunk's output is zero, so the current factors' gradients are those of the unexpanded
    module and one set of backward passes gives both scores.

    Args:
        modules: the modules under test.
        losses_fn: recomputes the ``[batch]`` per-sample losses of the current batch.
        estimate: one of :data:`FISHER_ESTIMATES`.
    """
    if estimate not in FISHER_ESTIMATES:
        raise ValueError(f"estimate must be one of {FISHER_ESTIMATES}, got {estimate!r}")
    groups = [list(m.lora_A) + list(m.lora_B) for m in modules] + [list(m._trial or ()) for m in modules]
    if any(not g for g in groups):
        raise RuntimeError("fisher_scores needs every module in a trial (begin_trial)")
    flat = [p for group in groups for p in group]
    with torch.enable_grad():
        losses = losses_fn()
    if losses.dim() != 1:
        raise RuntimeError(f"selora: loss_fn() must return the [batch] per-sample losses, got shape {tuple(losses.shape)}")
    if estimate == "batch_mean" or len(losses) == 1:
        sums = torch.stack(_squared_gradient_sums(losses.mean(), flat, retain=False))
    else:
        total = [torch.zeros((), dtype=torch.float64, device=p.device) for p in flat]
        for i, loss in enumerate(losses):
            for j, s in enumerate(_squared_gradient_sums(loss, flat, retain=i < len(losses) - 1)):
                total[j] = total[j] + s
        sums = torch.stack(total) / len(losses)
    scores, pos = [], 0
    for group in groups:
        scores.append(sums[pos : pos + len(group)].sum())
        pos += len(group)
    n = len(modules)
    return torch.stack([torch.stack(scores[:n]), torch.stack(scores[n:])], 1)


def fi_ratio(current: float, trial: float) -> float:
    """FI-Ratio = FI-Score(expanded) / FI-Score(current) = (current + trial) / current.

    The paper's Eq. 5 prints the fraction upside down; its section 3.3 analysis ("when the rank is
    small it favours expansion", the ``(rank + 1) / rank`` factor) and "expand when the ratio
    exceeds lambda >= 1" need expanded / current, used here.
    """
    if current > 0:
        return (current + trial) / current
    return math.inf if trial > 0 else 1.0
