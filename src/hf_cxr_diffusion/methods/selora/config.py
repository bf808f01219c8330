"""Options of SeLoRA (Mao et al., "SeLoRA: Self-Expanding Low-Rank Adaptation of Latent Diffusion
Model for Medical Image Synthesis"); the defaults are the paper's (sections 3.1, 3.5)."""

from __future__ import annotations

import dataclasses
import math

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.methods.base import MethodConfig
from hf_cxr_diffusion.methods.lowrank import ALL_LINEAR

#: ``fisher`` option values: Eq. 3 (mean of per-sample squared gradients) or the squared batch-mean gradient
FISHER_ESTIMATES = ("per_sample", "batch_mean")

#: reference values of the copies of the official code we could read (see :mod:`.method`)
REFERENCE_COPY_ALPHA = 8.0
REFERENCE_COPY_KAIMING_A = 0.0
#: what this project used before following the paper (``nn.Linear`` / peft's init, no extra scale)
LINEAR_INIT_KAIMING_A = math.sqrt(5)


@dataclasses.dataclass
class SeLoRAConfig(MethodConfig):
    """Options of :class:`~hf_cxr_diffusion.methods.selora.SeLoRA`.

    Args:
        target_modules: U-Net layers to adapt: ``"all-linear"`` (every ``nn.Linear``, the paper's
            section 3.5) or a list of module-name suffixes to restrict it (e.g. ``["to_q", "to_k"]``).
        train_text_encoder: also adapt the CLIP text encoder (section 3.5: yes).
        text_encoder_target_modules: text-encoder layers: ``"all-linear"`` (section 3.5; Fig. 3 shows
            q/k/v/out/fc1/fc2) or a list of name suffixes.
        lora_alpha: the FIXED scale of the update ``alpha * B A`` at every rank (an expansion never
            rescales). Eqs. 1-2 of the paper have no scale: 1.0. The reference copies of the official
            code use ``lora_alpha / r0 = 8 / 1`` (:data:`REFERENCE_COPY_ALPHA`); a larger scale makes
            the new column of B learn, and the rank grow, faster.
        kaiming_a: negative slope ``a`` of the Kaiming-uniform init of every row of A (initial and
            trial, Eq. 2: "K is initialized with Kaiming uniform initialization"), bound
            ``sqrt(6 / ((1 + a^2) in_features))``. 0 is Kaiming's (He et al. 2015) and
            ``torch.nn.init.kaiming_uniform_``'s default, as in the reference copies; ``sqrt(5)`` is
            ``nn.Linear`` / peft's, 2.45x smaller, which slows the rank growth.
        lora_dropout: dropout on the adapter's input (training only; the paper uses none).
        expansion_threshold: lambda: a module grows when FI-Score(expanded) / FI-Score(current) > lambda
            (section 3.5: 1.1; ``inf`` never grows).
        expansion_interval: t: test an expansion every t optimizer steps (section 3.5: 40).
        fisher: how Eq. 3's Fisher information is estimated on the step's batch: ``"per_sample"`` (the
            paper: mean of per-sample squared gradients, one backward pass per sample) or
            ``"batch_mean"`` (squared gradient of the batch-mean loss, one backward pass, as in the
            reference copies of the official code).
        max_rank: upper bound of any module's rank (None: none, as in the paper).
        seed: seed of the initial and trial rows of A (identical on every process).
    """

    target_modules: str | list[str] = dataclasses.field(
        default=ALL_LINEAR,
        metadata={"help": "U-Net layers: 'all-linear' (every nn.Linear, the paper) or a list of name suffixes"},
    )
    train_text_encoder: bool = dataclasses.field(default=True, metadata={"help": "also adapt the CLIP text encoder (the paper: yes)"})
    text_encoder_target_modules: str | list[str] = dataclasses.field(
        default=ALL_LINEAR,
        metadata={"help": "text encoder layers: 'all-linear' (the paper: q, k, v, out, fc1, fc2) or a list of name suffixes"},
    )
    lora_alpha: float = dataclasses.field(
        default=1.0, metadata={"help": "fixed scale of the update at every rank (paper Eqs. 1-2: 1; reference copies: 8)"}
    )
    kaiming_a: float = dataclasses.field(
        default=REFERENCE_COPY_KAIMING_A,
        metadata={"help": "Kaiming-uniform slope a of A's rows (0: Kaiming, the paper and reference copies; 2.236: nn.Linear/peft)"},
    )
    lora_dropout: float = dataclasses.field(default=0.0, metadata={"help": "dropout on the adapter input (the paper: none)"})
    expansion_threshold: float = dataclasses.field(
        default=1.1, metadata={"help": "lambda: grow when FI-Score(expanded)/FI-Score(current) > lambda (paper: 1.1; inf: never)"}
    )
    expansion_interval: int = dataclasses.field(default=40, metadata={"help": "t: test an expansion every t optimizer steps (paper: 40)"})
    fisher: str = dataclasses.field(
        default="per_sample",
        metadata={"help": "Fisher estimate: per_sample (paper Eq. 3) or batch_mean (squared batch gradient, reference copies; cheaper)"},
    )
    max_rank: int | None = dataclasses.field(default=None, metadata={"help": "upper bound of any module's rank (None: none)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the initial and trial A rows"})

    def __post_init__(self) -> None:
        if self.expansion_interval < 1:
            raise UserError(f"selora: expansion_interval must be >= 1, got {self.expansion_interval}")
        if self.max_rank is not None and self.max_rank < 1:
            raise UserError(f"selora: max_rank must be >= 1 or None, got {self.max_rank}")
        if not self.expansion_threshold >= 0:
            raise UserError(f"selora: expansion_threshold must be >= 0 (inf to never grow), got {self.expansion_threshold}")
        if self.fisher not in FISHER_ESTIMATES:
            raise UserError(f"selora: fisher must be one of {list(FISHER_ESTIMATES)}, got {self.fisher!r}")
        if not self.lora_alpha > 0:
            raise UserError(f"selora: lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"selora: lora_dropout must be in [0, 1), got {self.lora_dropout}")
