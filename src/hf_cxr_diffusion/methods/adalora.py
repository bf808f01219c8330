"""AdaLoRA: adaptive budget allocation by SVD-shaped updates and importance pruning (Zhang et al. 2023,
ICLR, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning"), through peft's ``AdaLoraConfig``.

Every adapted layer learns ``P diag(E) Q`` (peft's ``lora_B``, ``lora_E``, ``lora_A``) of an initial
rank; after each optimizer step peft's ``RankAllocator`` smooths the sensitivity ``|w * dL/dw|`` of
every entry (AdaLoRA Eqs. 8-10) and, on a cubic schedule between ``tinit`` and ``total_step -
tfinal``, zeroes the least important singular values until the AVERAGE rank over all adapted
layers (U-Net and text encoder together) is ``target_rank`` (section 3.3). The orthogonality
regulariser of Eq. 4 (``||P^T P - I||_F + ||Q Q^T - I||_F`` averaged over the factors, as peft
computes it) is added to the loss through :meth:`AdaLoRA.auxiliary_loss`: peft itself adds it only
to a model output's ``.loss``, which a diffusers U-Net does not return.

The SeLoRA paper's AdaLoRA baseline (section 3.5) starts at rank 6 and prunes to an average of
4 on every ``nn.Linear`` of the U-Net and the text encoder: the defaults here. The artefact is an
ordinary diffusers LoRA with each layer's FINAL rank (the singular values left non-zero), so
``pipe.load_lora_weights`` reproduces the trained model exactly.

Needs from the trainer (``FineTuningMethod`` contract): :meth:`begin_training` with the run's
number of optimizer steps (unless ``total_step`` is set), and :meth:`after_optimizer_step` called
while ``.grad`` still holds the step's gradients.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hf_cxr_diffusion.artefacts import ArtefactKind
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import ensure_output_dir
from hf_cxr_diffusion.methods.base import MethodConfig, copy_into, freeze_all, trainable_named_parameters
from hf_cxr_diffusion.methods.lowrank import ALL_LINEAR, LowRankMethod, export_lora, load_lora_file, resolve_targets, save_lora_file

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from hf_cxr_diffusion.models.loading import SDComponents

logger = logging.getLogger(__name__)

ADAPTER = "default"
_EMA_KEYS = ("exp_avg_ipt", "exp_avg_unc")
_MASK_PREFIX = "adalora.rank_pattern."


@dataclasses.dataclass
class AdaLoRAConfig(MethodConfig):
    """Options of :class:`AdaLoRA` (peft's ``AdaLoraConfig``; defaults: the SeLoRA paper's baseline, section 3.5).

    Args:
        initial_rank: rank every layer starts with (peft ``init_r``; the SeLoRA paper: 6).
        target_rank: average rank over all adapted layers after pruning (peft ``target_r``; 4).
        lora_alpha: scale; the update is ``lora_alpha / initial_rank * P diag(E) Q``.
        lora_dropout: dropout on the adapter's input (training only).
        tinit: warm-up steps before any pruning (AdaLoRA's t_i).
        tfinal: final steps with the budget fixed at the target (AdaLoRA's t_f).
        delta_t: steps between two budget allocations (AdaLoRA's Delta T).
        beta1: EMA coefficient of the sensitivity (Eq. 9).
        beta2: EMA coefficient of the uncertainty (Eq. 10).
        orth_reg_weight: weight of the orthogonality regulariser (Eq. 4; peft's default 0.5).
        total_step: optimizer steps of the schedule (None: the training run's, from :meth:`AdaLoRA.begin_training`).
        target_modules: U-Net layers: ``"all-linear"`` (every ``nn.Linear``) or name suffixes.
        train_text_encoder: also adapt the CLIP text encoder.
        text_encoder_target_modules: text-encoder layers: ``"all-linear"`` or name suffixes.
    """

    initial_rank: int = dataclasses.field(default=6, metadata={"help": "rank every layer starts with (init_r; the SeLoRA paper: 6)"})
    target_rank: int = dataclasses.field(default=4, metadata={"help": "average rank after pruning (target_r; the SeLoRA paper: 4)"})
    lora_alpha: float = dataclasses.field(default=6.0, metadata={"help": "scale: the update is lora_alpha / initial_rank * P diag(E) Q"})
    lora_dropout: float = dataclasses.field(default=0.0, metadata={"help": "dropout on the adapter input"})
    tinit: int = dataclasses.field(default=0, metadata={"help": "warm-up steps before pruning starts"})
    tfinal: int = dataclasses.field(default=0, metadata={"help": "final steps at the target budget"})
    delta_t: int = dataclasses.field(default=1, metadata={"help": "steps between budget allocations"})
    beta1: float = dataclasses.field(default=0.85, metadata={"help": "EMA coefficient of the sensitivity"})
    beta2: float = dataclasses.field(default=0.85, metadata={"help": "EMA coefficient of the uncertainty"})
    orth_reg_weight: float = dataclasses.field(default=0.5, metadata={"help": "weight of the orthogonality regulariser (Eq. 4)"})
    total_step: int | None = dataclasses.field(default=None, metadata={"help": "steps of the schedule (None: the training run's)"})
    target_modules: str | list[str] = dataclasses.field(
        default=ALL_LINEAR, metadata={"help": "U-Net layers: 'all-linear' or a list of name suffixes"}
    )
    train_text_encoder: bool = dataclasses.field(default=True, metadata={"help": "also adapt the CLIP text encoder"})
    text_encoder_target_modules: str | list[str] = dataclasses.field(
        default=ALL_LINEAR, metadata={"help": "text encoder layers: 'all-linear' or a list of name suffixes"}
    )

    def __post_init__(self) -> None:
        if self.initial_rank < 1:
            raise UserError(f"adalora: initial_rank must be >= 1, got {self.initial_rank}")
        if not 1 <= self.target_rank <= self.initial_rank:
            raise UserError(
                f"adalora: target_rank must be in [1, initial_rank={self.initial_rank}] (AdaLoRA only prunes), got {self.target_rank}"
            )
        for name in ("tinit", "tfinal"):
            if getattr(self, name) < 0:
                raise UserError(f"adalora: {name} must be >= 0, got {getattr(self, name)}")
        if self.delta_t < 1:
            raise UserError(f"adalora: delta_t must be >= 1, got {self.delta_t}")
        for name in ("beta1", "beta2"):
            if not 0 < getattr(self, name) < 1:
                raise UserError(f"adalora: {name} must be in (0, 1), got {getattr(self, name)}")
        if self.orth_reg_weight < 0:
            raise UserError(f"adalora: orth_reg_weight must be >= 0, got {self.orth_reg_weight}")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"adalora: lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.total_step is not None:
            self.check_schedule(self.total_step, "total_step")

    def check_schedule(self, total_step: int, source: str) -> None:
        """UserError unless ``tinit`` and ``tfinal`` leave a pruning phase in ``total_step`` steps.

        peft's allocator updates the sensitivities only on steps before the final allocation
        (``total_step - tfinal``), so at least one such step must exist.
        """
        if max(self.tinit, 1) + self.tfinal >= total_step:
            raise UserError(
                f"adalora: tinit ({self.tinit}) + tfinal ({self.tfinal}) leave no pruning phase in {total_step} steps ({source}); "
                "lower them or train longer"
            )

    def peft_config(self, targets: list[str], total_step: int) -> Any:
        """peft's ``AdaLoraConfig`` for one component (``targets``: full layer names)."""
        from peft import AdaLoraConfig

        return AdaLoraConfig(
            init_r=self.initial_rank,
            target_r=self.target_rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            tinit=self.tinit,
            tfinal=self.tfinal,
            deltaT=self.delta_t,
            beta1=self.beta1,
            beta2=self.beta2,
            orth_reg_weight=self.orth_reg_weight,
            total_step=total_step,
            target_modules=targets,
        )


class AdaLoRA(LowRankMethod):
    """peft AdaLoRA on the U-Net and text encoder with one global rank budget."""

    name = "adalora"
    config_class = AdaLoRAConfig
    save_format = ArtefactKind.LORA
    config: AdaLoRAConfig

    def __init__(self, config: AdaLoRAConfig | None = None) -> None:
        super().__init__(config)
        self._models: nn.ModuleDict | None = None
        self.allocator: Any = None
        self.total_step: int | None = self.config.total_step

    def apply(self, components: SDComponents) -> None:
        from peft import inject_adapter_in_model
        from peft.tuners.adalora import RankAllocator

        freeze_all(components)
        c = self.config
        placeholder = self.total_step or c.tinit + c.tfinal + 1  # AdaLoraConfig needs one; begin_training sets the run's
        models, all_paths = {}, []
        for cname, paths in resolve_targets(self.name, c, components, layer_types=(nn.Linear,)).items():
            models[cname] = getattr(components, cname)
            inject_adapter_in_model(c.peft_config(paths, placeholder), models[cname], adapter_name=ADAPTER)
            all_paths += [f"{cname}.{p}" for p in paths]
        self._models = nn.ModuleDict(models)  # one namespace, so the budget is shared by all components
        self.allocator = RankAllocator(self._models, c.peft_config(all_paths, placeholder), ADAPTER)

    def begin_training(self, total_steps: int) -> None:
        """Use the run's ``total_steps`` for the pruning schedule unless ``total_step`` was configured."""
        if self.config.total_step is None:
            self.config.check_schedule(total_steps, "the run's optimizer steps")
            self.total_step = total_steps
        if self.allocator is not None:
            self.allocator.set_total_step(self.total_step)

    def after_optimizer_step(
        self, step: int, components: SDComponents, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]
    ) -> None:
        """peft's ``update_and_allocate(step)``: update the sensitivities from ``.grad``, prune on schedule, keep the masks."""
        if self.allocator is None or self._models is None:
            raise RuntimeError("adalora: apply() must run before training")
        if self.total_step is None:
            raise RuntimeError("adalora: the schedule's total_step is unknown: set it in the method config or call begin_training()")
        end = self.total_step - self.config.tfinal
        if step <= end:
            missing = [n for n, p in self._models.named_parameters() if p.requires_grad and p.grad is None]
            if missing:
                raise RuntimeError(
                    f"adalora needs the step's gradients in after_optimizer_step (call it before zero_grad); none on {missing[0]}"
                )
        if step < end:
            _, pattern = self.allocator.update_and_allocate(self._models, step)
        elif step == end:
            _, pattern = self.allocator.update_and_allocate(self._models, step, force_mask=True)
            self.allocator.reset_ipt()
        else:
            pattern = None
            self.allocator.mask_using_rank_pattern(self._models, self._rank_pattern())
        if pattern:
            self.allocator.peft_config.rank_pattern = pattern

    def _rank_pattern(self) -> dict[str, list[bool]]:
        pattern = self.allocator.peft_config.rank_pattern
        if pattern is None:
            raise RuntimeError(f"adalora: step {self.total_step - self.config.tfinal} (the final allocation) never ran")
        return pattern

    def auxiliary_loss(self, components: SDComponents, pixels: torch.Tensor | None, latents: torch.Tensor | None) -> torch.Tensor | None:
        """``orth_reg_weight`` x the orthogonality regulariser of Eq. 4 as peft computes it (mean Frobenius norm over factors)."""
        if self._models is None or self.config.orth_reg_weight == 0:
            return None
        norms = []
        for name, p in self._models.named_parameters():
            if f"lora_A.{ADAPTER}" in name or f"lora_B.{ADAPTER}" in name:
                gram = p @ p.T if "lora_A" in name else p.T @ p
                norms.append(torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)))
        return self.config.orth_reg_weight * torch.stack(norms).mean()

    def ranks(self) -> dict[str, int]:
        """Current budget of every adapted layer (singular values not pruned), keyed ``"<component>.<layer path>"``."""
        pattern = self.allocator.peft_config.rank_pattern or {}
        return {
            f"{cname}.{path}": sum(pattern.get(f"{cname}.{path}.lora_E.{ADAPTER}", [True] * self.config.initial_rank))
            for cname, path, _ in self._layers()
        }

    def _layers(self) -> list[tuple[str, str, Any]]:
        from peft.tuners.adalora import AdaLoraLayer

        assert self._models is not None
        return [(cname, path, m) for cname, model in self._models.items() for path, m in model.named_modules() if isinstance(m, AdaLoraLayer)]

    def trainable_state_dict(self, components: SDComponents) -> dict[str, torch.Tensor]:
        """The factors, the sensitivity EMAs (so a resume continues the same schedule) and the final masks once set."""
        state = super().trainable_state_dict(components)
        for key in _EMA_KEYS:
            state.update({f"adalora.{key}.{n}": t.clone() for n, t in getattr(self.allocator, key).items()})
        pattern = self.allocator.peft_config.rank_pattern
        if pattern is not None:
            state.update({f"{_MASK_PREFIX}{n}": torch.tensor(v, dtype=torch.bool) for n, v in pattern.items()})
        return state

    def load_trainable_state_dict(self, components: SDComponents, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        for key in _EMA_KEYS:
            prefix = f"adalora.{key}."
            getattr(self.allocator, key).update({k[len(prefix) :]: state.pop(k) for k in [k for k in state if k.startswith(prefix)]})
        self.allocator.ipt.update({n: torch.zeros_like(t) for n, t in self.allocator.exp_avg_ipt.items()})
        masks = {k[len(_MASK_PREFIX) :]: state.pop(k).tolist() for k in [k for k in state if k.startswith(_MASK_PREFIX)]}
        self.allocator.peft_config.rank_pattern = masks or None
        copy_into(trainable_named_parameters(components), state, what="adalora checkpoint")

    def save(self, components: SDComponents, output_dir: str | Path, *, base_model: str) -> Path:
        out = ensure_output_dir(output_dir)
        exported: dict[str, Any] = {}
        dropped = []
        for cname in self._targets():
            factors = {}
            for layer_cname, path, m in self._layers():
                if layer_cname != cname:
                    continue
                keep = (m.lora_E[ADAPTER] != 0).view(-1)  # pruned (and never trained) singular values add nothing
                if not keep.any():
                    dropped.append(f"{cname}.{path}")
                    continue
                a = (m.lora_A[ADAPTER] * m.lora_E[ADAPTER])[keep]
                factors[path] = (a, m.lora_B[ADAPTER][:, keep], float(m.scaling[ADAPTER]) / (float(m.ranknum[ADAPTER]) + 1e-5))
            if not factors:
                raise UserError(f"adalora: every layer of the {cname} was pruned to rank 0; nothing to save (raise target_rank)")
            exported[cname] = export_lora(factors, self.config.lora_dropout)
        if dropped:
            logger.info("adalora: %d layer(s) pruned to rank 0 are left out of the LoRA (e.g. %s)", len(dropped), dropped[0])
        te = exported.get("text_encoder", (None, None))
        save_lora_file(out, *exported["unet"], te[0], te[1])
        self.write_method_file(components, out, base_model=base_model)
        ranks = list(self.ranks().values())
        logger.info("adalora adapter (ranks %d..%d, mean %.2f) saved to %s", min(ranks), max(ranks), sum(ranks) / len(ranks), out)
        return out

    def load_saved(self, pipe: DiffusionPipeline, path: Path) -> DiffusionPipeline:
        return load_lora_file(pipe, path, self.name)
