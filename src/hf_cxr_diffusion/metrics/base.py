"""The accumulator interface every feature metric implements (torchmetrics ``Metric`` style).

A metric is fed :class:`Batch` es of one streaming pass (features of the synthetic, real and
training images, with their labels), keeps only mergeable state, and ``compute()`` returns its
report entry. ``merge`` adds another shard's state (same protocol only); ``all_reduce`` sums
state over processes. ``higher_is_better`` says which direction is better and ``headline()``
picks the entry's one number a report and a card show (:class:`Reported`, shared with the pass
metrics, which run their own networks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.metrics.stats import check_protocols

SIDES = ("synthetic", "real", "training")
NO_FINDING = "No Finding"


@dataclass
class Batch:
    """One batch of one image set: ``features`` (``B x d``), the label names of each image, the model inputs."""

    side: str
    features: torch.Tensor
    labels: Sequence[Sequence[str]] | None = None
    pixels: torch.Tensor | None = None


@dataclass
class Context:
    """What every metric of one evaluation shares: the feature dim, the protocol and the provenance to carry."""

    feature_dim: int
    protocol: str
    feature_model: str
    provenance: dict[str, Any] = field(default_factory=dict)
    classifier: Any = None


class Reported:
    """What a report needs of a metric: its name, its direction and its headline number."""

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    #: the entry key of the headline number (``compute()`` / ``run()``'s result)
    headline_key: ClassVar[str] = "score"
    #: the entry key naming the weights the number was computed with
    weights_key: ClassVar[str] = "weights"

    @classmethod
    def headline(cls, entry: dict[str, Any]) -> float | None:
        """The one number reports and cards show for ``entry`` (None when it was not computed)."""
        value = entry.get(cls.headline_key)
        return None if value is None else float(value)


class Metric(Reported):
    """Base accumulator: subclasses set ``name``, ``higher_is_better``, ``sides`` and implement the hooks."""
    #: image sets the metric reads; ``real`` in ``optional`` is used when given
    sides: ClassVar[tuple[str, ...]] = ("synthetic",)
    optional: ClassVar[tuple[str, ...]] = ()
    needs_labels: ClassVar[bool] = False

    def __init__(self, context: Context) -> None:
        self.context = context

    @property
    def protocol(self) -> str:
        return self.context.protocol

    @classmethod
    def from_options(cls, context: Context, options: Any) -> Metric:
        """Build from an evaluation's options (:class:`~hf_cxr_diffusion.metrics.api.EvalOptions`)."""
        return cls(context)

    @classmethod
    def check_inputs(cls, *, real: bool, training: bool, labels_synthetic: bool, labels_real: bool, options: Any) -> None:
        """Raise :class:`UserError` before any image is read when the inputs cannot give this metric."""
        if "real" in cls.sides and not real:
            raise UserError(f"{cls.name} needs real images")
        if cls.needs_labels and not labels_synthetic:
            raise UserError(f"{cls.name} needs labels_synthetic (the label each synthetic image was prompted with)")

    def reads(self, side: str) -> bool:
        return side in self.sides or side in self.optional

    def update(self, batch: Batch) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, Any]:
        """The report entry: ``{"score": ..., counts..., provenance...}`` (and ``by_condition`` rows if any)."""
        raise NotImplementedError

    def _states(self) -> list[Any]:
        """The mergeable states (``FeatureStats`` / ``GramStats`` / counters) in a fixed order."""
        raise NotImplementedError

    def merge(self, other: Metric) -> Metric:
        """Add ``other``'s state (another shard of the same evaluation) into this one."""
        if type(other) is not type(self):
            raise UserError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        check_protocols(self, other)
        for mine, theirs in zip(self._states(), other._states()):
            mine.merge(theirs)
        return self

    def all_reduce(self, accelerator: Any = None) -> Metric:
        """Sum every state over processes (``accelerate.Accelerator`` or initialised torch.distributed)."""
        for state in self._states():
            state.all_reduce(accelerator)
        return self

    def close(self) -> None:
        """Release temporary resources (files); the metric is not updated afterwards."""

    def carried(self) -> dict[str, Any]:
        """Provenance every result of this metric carries (protocol, feature model, weights, versions)."""
        return dict(self.context.provenance)
