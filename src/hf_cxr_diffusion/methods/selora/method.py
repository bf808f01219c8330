"""SeLoRA: self-expanding low-rank adaptation (Mao et al., "SeLoRA: Self-Expanding Low-Rank Adaptation
of Latent Diffusion Model for Medical Image Synthesis", section 3).

As the paper runs it by default (section 3.5): every ``nn.Linear`` of the U-Net and of the text
encoder gets a LoRA update that starts at rank 1 (:class:`~.layer.SeLoRALinear`). Every
``expansion_interval`` (t = 40) optimizer steps every module is tested with a TRIAL expansion: a
new row K of A (Kaiming-uniform) and a new column of B equal to zero, so the output is unchanged
(Eq. 2) while the new column of B gets a gradient. The step's batch is recomputed as per-sample
losses, the empirical Fisher information of every A/B entry is the mean over the batch of squared
per-sample gradients (Eq. 3, :func:`~.fisher.fisher_scores`), FI-Score sums it over A and B
(Eq. 4), and a module grows (keeping the tested row) when FI-Score(expanded) / FI-Score(current)
> lambda = 1.1 (:func:`~.fisher.fi_ratio`).

What the official code does could not be checked here: its repository
(anonymous.4open.science/r/SeLoRA-980D) is not reachable. We read two third-party copies derived
from it (github.com/marinacrsp/MIGROS-Budget and marinacrsp/migros_deepL, ``selora_finetuning.py``,
which say they modified the original). In MIGROS-Budget @ c86b62a, ``selora_finetuning.py``:
the scale is ``lora_alpha / r = 8 / 1``, fixed at construction (lines 190, 211; our option
``lora_alpha``); A uses ``nn.init.kaiming_uniform_`` with its default a = 0 (line 229; our
``kaiming_a``); the trial row of A starts at zero (line 207, the random init commented out at
line 232), so a module's first test compares identical functions; the ratio is the squared
gradient of the batch-mean loss after / before switching to the trial (lines 328-334; our
``fisher="batch_mean"``); a module grows when the ratio is >= the threshold (line 517; ours: >,
"exceeds", section 3.2), and the accepted expansion draws a fresh random row instead of keeping
the tested one. Our defaults follow the paper (Eqs. 1-3: no scale, Kaiming init, per-sample
Fisher); every reference value is one option away.

Design:

* an expansion appends a rank chunk; existing ``nn.Parameter`` objects and their optimizer state
  (Adam moments, step) are untouched, the new chunk joins the optimizer param group holding the
  module's first chunk (:func:`add_to_optimizer`, fresh state);
* the scale never changes with the rank; the export is an ordinary peft LoRA with per-module
  ranks (:func:`~hf_cxr_diffusion.methods.lowrank.export_lora`);
* trial rows come from generators seeded by (``seed``, step, module index), so every process of a
  distributed run draws the same trial and the trainer's RNG streams are untouched; Fisher scores
  are summed over processes when ``torch.distributed`` is initialised;
* ``rank_history`` logs every module's rank at every test; checkpoints store it (:mod:`.state`);
  :meth:`SeLoRA.save` writes the LoRA, ``selora_ranks.json`` and the heatmaps (:mod:`.heatmap`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hf_cxr_diffusion.artefacts import ArtefactKind
from hf_cxr_diffusion.io import ensure_output_dir, write_json_atomic
from hf_cxr_diffusion.methods.base import copy_into, freeze_all, trainable_named_parameters
from hf_cxr_diffusion.methods.lowrank import LowRankMethod, export_lora, load_lora_file, resolve_targets, save_lora_file, wrap_linear_layers
from hf_cxr_diffusion.methods.selora.config import SeLoRAConfig
from hf_cxr_diffusion.methods.selora.fisher import fi_ratio, fisher_scores
from hf_cxr_diffusion.methods.selora.heatmap import plot_rank_heatmap
from hf_cxr_diffusion.methods.selora.layer import SeLoRALinear, row_generator
from hf_cxr_diffusion.methods.selora.state import decode_ranks, encode_ranks

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from hf_cxr_diffusion.models.loading import SDComponents

logger = logging.getLogger(__name__)

RANKS_FILE = "selora_ranks.json"
HEATMAP_FILE = "selora_rank_heatmap.png"


def add_to_optimizer(optimizer: torch.optim.Optimizer, anchor: nn.Parameter, new: tuple[nn.Parameter, ...]) -> None:
    """Append ``new`` to the param group of ``optimizer`` that holds ``anchor`` (they start with empty state)."""
    for group in optimizer.param_groups:
        if any(p is anchor for p in group["params"]):
            group["params"].extend(new)
            return
    raise RuntimeError("selora: the module's parameters are not in the optimizer; build it from method.param_groups()")


class SeLoRA(LowRankMethod):
    """Self-expanding LoRA on every ``nn.Linear`` of the U-Net and the text encoder (or the configured subset)."""

    name = "selora"
    config_class = SeLoRAConfig
    save_format = ArtefactKind.LORA
    config: SeLoRAConfig

    def __init__(self, config: SeLoRAConfig | None = None) -> None:
        super().__init__(config)
        #: ``"<component>.<module path>"`` -> module, in model order
        self.modules: dict[str, SeLoRALinear] = {}
        #: one entry per test: ``{"step": int, "ranks": {module: rank}}``
        self.rank_history: list[dict[str, Any]] = []

    def apply(self, components: SDComponents) -> None:
        freeze_all(components)
        c, self.modules = self.config, {}
        for cname, paths in resolve_targets(self.name, c, components, layer_types=(nn.Linear,)).items():
            offset = len(self.modules)
            wrapped = wrap_linear_layers(
                getattr(components, cname),
                paths,
                lambda i, layer: SeLoRALinear(
                    layer, scale=c.lora_alpha, dropout=c.lora_dropout, kaiming_a=c.kaiming_a, generator=row_generator(c.seed, 0, offset + i)
                ),
            )
            self.modules.update({f"{cname}.{path}": module for path, module in wrapped.items()})
        self.rank_history = [{"step": 0, "ranks": self.ranks()}]

    def ranks(self) -> dict[str, int]:
        """Current rank of every module."""
        return {name: m.rank for name, m in self.modules.items()}

    def expand(self, step: int, optimizer: torch.optim.Optimizer | None, losses_fn: Callable[[], torch.Tensor]) -> dict[str, float]:
        """Test one expansion of every module below ``max_rank``; grow those whose FI-Ratio exceeds lambda.

        Args:
            step: the optimizer step (seeds the trial rows).
            optimizer: new parameters join it (in the param group of the module's parameters); None: no optimizer.
            losses_fn: recomputes the step's ``[batch]`` per-sample losses.

        Returns:
            The FI-Ratio (expanded / current) of every tested module.
        """
        cap = self.config.max_rank
        tested = [(i, name, m) for i, (name, m) in enumerate(self.modules.items()) if cap is None or m.rank < cap]
        if not tested or math.isinf(self.config.expansion_threshold):
            return {}
        for i, _, module in tested:
            module.begin_trial(row_generator(self.config.seed, step, i))
        try:
            scores = fisher_scores([m for _, _, m in tested], losses_fn, self.config.fisher)
        finally:
            rows = [m.end_trial() for _, _, m in tested]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(scores)
        ratios: dict[str, float] = {}
        for (_, name, module), row, (current, trial) in zip(tested, rows, scores.tolist(), strict=True):
            ratios[name] = fi_ratio(current, trial)
            if ratios[name] > self.config.expansion_threshold:
                anchor = module.lora_A[0]
                new = module.grow(row)
                if optimizer is not None:
                    add_to_optimizer(optimizer, anchor, new)
        grown = sum(r > self.config.expansion_threshold for r in ratios.values())
        logger.info("selora step %d: %d of %d modules grew; total rank %d", step, grown, len(tested), sum(self.ranks().values()))
        return ratios

    def after_optimizer_step(
        self, step: int, components: SDComponents, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]
    ) -> None:
        """Every ``expansion_interval`` steps: :meth:`expand` on the step's per-sample losses ``loss_fn()``, then log the ranks."""
        if step % self.config.expansion_interval:
            return
        self.expand(step, optimizer, loss_fn)
        self.rank_history.append({"step": step, "ranks": self.ranks()})

    def trainable_state_dict(self, components: SDComponents) -> dict[str, torch.Tensor]:
        return {**super().trainable_state_dict(components), **encode_ranks(self.ranks(), self.rank_history)}

    def load_trainable_state_dict(self, components: SDComponents, state: dict[str, torch.Tensor]) -> None:
        """Grow every module to its checkpointed rank, then load the factors (call before building the optimizer)."""
        state = dict(state)
        ranks, self.rank_history = decode_ranks(state, list(self.modules))
        for name, module in self.modules.items():
            while module.rank < ranks[name]:
                module.grow(torch.zeros(1, module.base.in_features))
        copy_into(trainable_named_parameters(components), state, what="selora checkpoint")

    def export_state(self, component: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """An ordinary peft LoRA of one component: state dict (``<path>.lora_A.weight`` ...) and adapter metadata."""
        prefix = f"{component}."
        factors = {name[len(prefix) :]: m.factors() for name, m in self.modules.items() if name.startswith(prefix)}
        return export_lora(factors, self.config.lora_dropout)

    def save(self, components: SDComponents, output_dir: str | Path, *, base_model: str) -> Path:
        out = ensure_output_dir(output_dir)
        exported = {c: self.export_state(c) for c in self._targets()}
        te = exported.get("text_encoder", (None, None))
        save_lora_file(out, *exported["unet"], te[0], te[1])
        write_json_atomic(out / RANKS_FILE, {"final": self.ranks(), "history": self.rank_history})
        plot_rank_heatmap(self.ranks(), out / HEATMAP_FILE)
        self.write_method_file(components, out, base_model=base_model)
        logger.info("selora adapter (total rank %d) saved to %s", sum(self.ranks().values()), out)
        return out

    def load_saved(self, pipe: DiffusionPipeline, path: Path) -> DiffusionPipeline:
        return load_lora_file(pipe, path, self.name)

