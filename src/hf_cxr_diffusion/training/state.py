"""``TrainerState``: where a training run is, the part of ``trainer_state.json`` that changes every step.

One object holds the loop's position (optimizer step, epoch, next batch, micro-step), the loss
history, per-epoch wall time and the validation history with the best checkpoint so far. The loop
updates it in place; a checkpoint writes :meth:`TrainerState.to_json` next to the run's identity
and a resume reads it back with :meth:`TrainerState.from_json`, so resuming continues at the exact
next batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class TrainerState:
    """Position and history of a training run.

    Args:
        global_step: optimizer steps done.
        epoch: epoch the next batch belongs to.
        next_batch: index of the next batch within ``epoch``.
        micro_step: micro-batches done (seeds the objective's random draws, :mod:`.rng`).
        loss_history: ``(step, mean loss of the step's micro-batches)`` per optimizer step.
        epoch_seconds: wall time spent in the loop per epoch.
        metric_history: ``{"step": s, <metric>: value, ...}`` per validation-metric evaluation.
        best: ``{"metric", "value", "step"}`` of the best checkpoint (``--keep-best``), or None.
    """

    global_step: int = 0
    epoch: int = 0
    next_batch: int = 0
    micro_step: int = 0
    loss_history: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    epoch_seconds: dict[int, float] = dataclasses.field(default_factory=dict)
    metric_history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    best: dict[str, Any] | None = None

    def finish_step(self, micro_step: int, loss: float, epoch: int, batch: int, batches_per_epoch: int, seconds: float) -> None:
        """Record one optimizer step that ended with ``batch`` of ``epoch`` and took ``seconds``."""
        self.global_step += 1
        self.micro_step = micro_step
        self.loss_history.append((self.global_step, loss))
        self.epoch_seconds[epoch] = self.epoch_seconds.get(epoch, 0.0) + seconds
        done_epoch = batch + 1 == batches_per_epoch
        self.epoch, self.next_batch = (epoch + 1, 0) if done_epoch else (epoch, batch + 1)

    @property
    def final_loss(self) -> float | None:
        return self.loss_history[-1][1] if self.loss_history else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists, epoch keys strings)."""
        data = dataclasses.asdict(self)
        data["loss_history"] = [list(x) for x in self.loss_history]
        data["epoch_seconds"] = {str(k): v for k, v in self.epoch_seconds.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainerState:
        """Inverse of :meth:`to_json`; keys that are not state fields (the run's identity) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in names}
        fields["loss_history"] = [(int(s), float(v)) for s, v in fields.get("loss_history", [])]
        fields["epoch_seconds"] = {int(k): float(v) for k, v in fields.get("epoch_seconds", {}).items()}
        fields["metric_history"] = list(fields.get("metric_history", []))
        return cls(**fields)
