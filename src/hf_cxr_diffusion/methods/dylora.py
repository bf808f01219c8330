"""DyLoRA: dynamic, search-free low-rank adaptation by nested dropout (Valipour et al. 2023, EACL,
"DyLoRA: Parameter-Efficient Tuning of Pre-trained Models using Dynamic Search-Free Low-Rank
Adaptation", section 3).

A LoRA of maximum rank r whose rank is truncated at random while training: every optimizer step
draws b ~ Uniform{r_min, ..., r} (one b per step, shared by every module, the same on every
process), and every adapted layer computes ``W0 x + (alpha / b) B[:, :b] A[:b, :] x`` (Eqs. 4-5).
The gradient reaches the first b rows / columns, so the low ranks learn the most useful directions
first and the adapter still works truncated to any rank in [r_min, r]. With ``frozen`` only the
b-th row of A and column of B get gradient (the paper's "frozen" variant, the lower ranks being
kept as they are). Outside training (``module.eval()``) the layers use ``export_rank``, and the
artefact is an ordinary diffusers LoRA truncated to that rank (``pipe.load_lora_weights``).

The SeLoRA paper's DyLoRA baseline (section 3.5) is r = 4 on every ``nn.Linear`` of the U-Net and
the text encoder: the defaults here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from hf_cxr_diffusion.artefacts import ArtefactKind
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import ensure_output_dir
from hf_cxr_diffusion.methods.base import MethodConfig, copy_into, freeze_all, trainable_named_parameters
from hf_cxr_diffusion.methods.lowrank import (
    ALL_LINEAR,
    Factors,
    LowRankLinear,
    LowRankMethod,
    export_lora,
    load_lora_file,
    resolve_targets,
    save_lora_file,
    wrap_linear_layers,
)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from hf_cxr_diffusion.models.loading import SDComponents

logger = logging.getLogger(__name__)

_STEP_KEY = "dylora.next_step"


@dataclasses.dataclass
class DyLoRAConfig(MethodConfig):
    """Options of :class:`DyLoRA` (defaults: the SeLoRA paper's DyLoRA baseline, section 3.5).

    Args:
        rank: maximum rank r (DyLoRA's r_max; the SeLoRA paper: 4).
        min_rank: smallest rank drawn while training (r_min, DyLoRA section 3: 1).
        export_rank: the rank the saved adapter (and eval mode) is truncated to, in [min_rank, rank]
            (None: ``rank``).
        lora_alpha: alpha; a module truncated to rank b is scaled by ``alpha / b`` (Eq. 5).
        lora_dropout: dropout on the adapter's input (training only).
        frozen: only the sampled rank's row of A / column of B trains each step (the paper's
            "frozen" variant); False: all of the first b rows / columns train.
        target_modules: U-Net layers: ``"all-linear"`` (every ``nn.Linear``) or name suffixes.
        train_text_encoder: also adapt the CLIP text encoder.
        text_encoder_target_modules: text-encoder layers: ``"all-linear"`` or name suffixes.
        seed: seed of the per-step rank draws (and of nothing else).
    """

    rank: int = dataclasses.field(default=4, metadata={"help": "maximum rank r (the SeLoRA paper's DyLoRA: 4)"})
    min_rank: int = dataclasses.field(default=1, metadata={"help": "smallest rank b drawn while training (r_min)"})
    export_rank: int | None = dataclasses.field(
        default=None, metadata={"help": "rank the saved adapter and eval mode are truncated to (None: rank)"}
    )
    lora_alpha: float = dataclasses.field(default=4.0, metadata={"help": "alpha; rank b is scaled by alpha / b (Eq. 5)"})
    lora_dropout: float = dataclasses.field(default=0.0, metadata={"help": "dropout on the adapter input"})
    frozen: bool = dataclasses.field(
        default=False, metadata={"help": "only the sampled rank's row/column trains each step (the paper's 'frozen' variant)"}
    )
    target_modules: str | list[str] = dataclasses.field(
        default=ALL_LINEAR, metadata={"help": "U-Net layers: 'all-linear' or a list of name suffixes"}
    )
    train_text_encoder: bool = dataclasses.field(default=True, metadata={"help": "also adapt the CLIP text encoder"})
    text_encoder_target_modules: str | list[str] = dataclasses.field(
        default=ALL_LINEAR, metadata={"help": "text encoder layers: 'all-linear' or a list of name suffixes"}
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the per-step rank draws"})

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise UserError(f"dylora: rank must be >= 1, got {self.rank}")
        if not 1 <= self.min_rank <= self.rank:
            raise UserError(f"dylora: min_rank must be in [1, rank={self.rank}], got {self.min_rank}")
        if self.export_rank is not None and not self.min_rank <= self.export_rank <= self.rank:
            raise UserError(
                f"dylora: export_rank must be in [min_rank={self.min_rank}, rank={self.rank}] (the trained ranks), got {self.export_rank}"
            )
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"dylora: lora_dropout must be in [0, 1), got {self.lora_dropout}")

    @property
    def chosen_rank(self) -> int:
        """The rank of the artefact: ``export_rank`` or ``rank``."""
        return self.rank if self.export_rank is None else self.export_rank


class DyLoRALinear(LowRankLinear):
    """A rank-``rank`` LoRA layer truncated to ``active_rank`` in training and to ``eval_rank`` otherwise (Eq. 5).

    Args:
        base: the frozen ``nn.Linear``.
        rank: maximum rank r.
        alpha: the update of rank b is scaled by ``alpha / b``.
        dropout: dropout on the adapter's input.
        eval_rank: the rank used outside training (the exported rank).
        frozen: in training, only the ``active_rank``-th row of A / column of B gets gradient.
    """

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float, eval_rank: int, frozen: bool) -> None:
        super().__init__(base, dropout)
        self.alpha, self.eval_rank, self.frozen = alpha, eval_rank, frozen
        self.active_rank = rank
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=self.factor_dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=self.factor_dtype, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # LoRA's (and peft's) init of A; B starts at zero

    def factors(self) -> Factors:
        b = self.active_rank if self.training else self.eval_rank
        a, up = self.lora_A[:b], self.lora_B[:, :b]
        if self.training and self.frozen and b > 1:
            a = torch.cat([a[: b - 1].detach(), a[b - 1 :]], 0)
            up = torch.cat([up[:, : b - 1].detach(), up[:, b - 1 :]], 1)
        return a, up, self.alpha / b


class DyLoRA(LowRankMethod):
    """Nested-dropout LoRA (Valipour et al. 2023) on the configured ``nn.Linear`` layers."""

    name = "dylora"
    config_class = DyLoRAConfig
    save_format = ArtefactKind.LORA
    config: DyLoRAConfig

    def __init__(self, config: DyLoRAConfig | None = None) -> None:
        super().__init__(config)
        #: ``"<component>.<module path>"`` -> module, in model order
        self.modules: dict[str, DyLoRALinear] = {}
        #: the optimizer step whose rank is active now (counts from 1)
        self.next_step = 1

    def sampled_rank(self, step: int) -> int:
        """The rank b drawn for optimizer ``step``: uniform on [min_rank, rank], a pure function of (seed, step)."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        return int(torch.randint(self.config.min_rank, self.config.rank + 1, (1,), generator=generator))

    def _activate(self, step: int) -> None:
        self.next_step = step
        b = self.sampled_rank(step)
        for module in self.modules.values():
            module.active_rank = b

    def apply(self, components: SDComponents) -> None:
        freeze_all(components)
        c, self.modules = self.config, {}
        for cname, paths in resolve_targets(self.name, c, components, layer_types=(nn.Linear,)).items():
            wrapped = wrap_linear_layers(
                getattr(components, cname),
                paths,
                lambda i, layer: DyLoRALinear(
                    layer, rank=c.rank, alpha=c.lora_alpha, dropout=c.lora_dropout, eval_rank=c.chosen_rank, frozen=c.frozen
                ),
            )
            self.modules.update({f"{cname}.{path}": module for path, module in wrapped.items()})
        self._activate(1)

    def after_optimizer_step(
        self, step: int, components: SDComponents, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]
    ) -> None:
        """Draw the rank of the next step."""
        self._activate(step + 1)

    def trainable_state_dict(self, components: SDComponents) -> dict[str, torch.Tensor]:
        return {**super().trainable_state_dict(components), _STEP_KEY: torch.tensor(self.next_step, dtype=torch.int64)}

    def load_trainable_state_dict(self, components: SDComponents, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        step = state.pop(_STEP_KEY, None)
        if step is None:
            raise UserError("dylora checkpoint has no 'dylora.next_step': it was not written by the dylora method")
        copy_into(trainable_named_parameters(components), state, what="dylora checkpoint")
        self._activate(int(step))

    def save(self, components: SDComponents, output_dir: str | Path, *, base_model: str) -> Path:
        out = ensure_output_dir(output_dir)
        k = self.config.chosen_rank
        exported = {}
        for cname in self._targets():
            prefix = f"{cname}."
            exported[cname] = export_lora(
                {n[len(prefix) :]: (m.lora_A[:k], m.lora_B[:, :k], m.alpha / k) for n, m in self.modules.items() if n.startswith(prefix)},
                self.config.lora_dropout,
            )
        te = exported.get("text_encoder", (None, None))
        save_lora_file(out, *exported["unet"], te[0], te[1])
        self.write_method_file(components, out, base_model=base_model)
        logger.info("dylora adapter truncated to rank %d of %d saved to %s", k, self.config.rank, out)
        return out

    def load_saved(self, pipe: DiffusionPipeline, path: Path) -> DiffusionPipeline:
        return load_lora_file(pipe, path, self.name)
