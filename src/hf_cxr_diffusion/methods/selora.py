"""SeLoRA: self-expanding low-rank adaptation (Mao et al., "SeLoRA: Self-Expanding Low-Rank
Adaptation of Latent Diffusion Model for Medical Image Synthesis", section 3).

Every adapted ``nn.Linear`` W0 gets a LoRA update ``scaling * B A x`` that starts at rank 1
(A kaiming-uniform, B zero). Every ``expansion_interval`` (t, paper: 40) optimizer steps and for
every module, a TRIAL expansion is added: a new row K of A, kaiming-uniform, and a new column of
B equal to ZERO, so the output is unchanged (Eq. 2) while the new column of B gets a non-zero
gradient (dL/dB_new = dL/dy (K x)^T). The current batch loss is recomputed (``loss_fn()``) and
the empirical Fisher information of every A/B entry is estimated as the mean over the batch of
squared per-sample gradients (Eq. 3; when ``loss_fn`` returns a scalar instead of per-sample
losses the squared batch gradient is used). FI-Score = sum of the Fisher information over A
and B (Eq. 4). The module grows when FI-Score(expanded) / FI-Score(current) > lambda
(``expansion_threshold``, paper: 1.1). The paper's Eq. 5 prints the ratio upside down; its
section 3.3 analysis and the expansion semantics need expanded / current, used here. The
official code's trial expansion is 0·0 (both new factors zero), so its ratio is always 1 and no
rank ever grows; here the trial A row is random, which is what gives the trial real gradients.

Design:

* the factors are kept as per-rank chunks (``lora_A[k]``: ``[1, in]``, ``lora_B[k]``: ``[out,
  1]``, concatenated at forward). An expansion appends a chunk; the existing ``nn.Parameter``
  objects, and hence their optimizer state (Adam moments, step), are untouched and the new chunk
  is appended to the optimizer param group that holds the module's first chunk (fresh state);
* the scale is FIXED at ``lora_alpha`` whatever the rank (``lora_alpha / r0`` with r0 = 1), so an
  expansion never changes the output. The export uses peft's per-module ``alpha / r`` convention
  with ``rank_pattern = {module: r}`` and ``alpha_pattern = {module: lora_alpha * r}``, which
  reproduces the same scale for every module;
* the trial's random rows come from a generator seeded by (``seed``, step, module index), so all
  processes of a distributed run draw the same trial and the trainer's RNG streams are untouched;
  Fisher scores are summed over processes when ``torch.distributed`` is initialised.

``rank_history`` logs the rank of every module at every check; :meth:`SeLoRA.save` writes an
ordinary diffusers LoRA (``pipe.load_lora_weights(out_dir)``), ``selora_ranks.json`` and the
rank-allocation heatmap ``selora_rank_heatmap.png`` (modules x blocks, as in the paper's Fig. 3/4).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hf_cxr_diffusion.artefacts import ArtefactKind
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import atomic_path, ensure_output_dir, write_json_atomic
from hf_cxr_diffusion.methods.base import FineTuningMethod, MethodConfig, copy_into, freeze_all, trainable_named_parameters
from hf_cxr_diffusion.methods.lora import (
    DEFAULT_TEXT_ENCODER_TARGETS,
    DEFAULT_UNET_TARGETS,
    adapter_metadata,
    check_target_modules,
    load_lora_file,
    save_lora_file,
    target_module_names,
)

logger = logging.getLogger(__name__)

RANKS_FILE = "selora_ranks.json"
HEATMAP_FILE = "selora_rank_heatmap.png"
_RANKS_KEY = "selora.ranks"
_HISTORY_KEY = "selora.rank_history"


@dataclasses.dataclass
class SeLoRAConfig(MethodConfig):
    lora_alpha: float = dataclasses.field(
        default=1.0, metadata={"help": "fixed scale of the LoRA update at every rank (alpha / initial rank 1)"}
    )
    lora_dropout: float = dataclasses.field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    target_modules: list[str] = dataclasses.field(
        default_factory=lambda: list(DEFAULT_UNET_TARGETS), metadata={"help": "U-Net Linear layers to adapt (name suffixes)"}
    )
    train_text_encoder: bool = dataclasses.field(default=False, metadata={"help": "also adapt the CLIP text encoder"})
    text_encoder_target_modules: list[str] = dataclasses.field(
        default_factory=lambda: [*DEFAULT_TEXT_ENCODER_TARGETS, "fc1", "fc2"],
        metadata={"help": "text encoder Linear layers to adapt (name suffixes; the paper's Fig. 3 adapts q, k, v, out, fc1, fc2)"},
    )
    expansion_threshold: float = dataclasses.field(
        default=1.1, metadata={"help": "lambda: grow when FI-Score(expanded)/FI-Score(current) > lambda (inf: never)"}
    )
    expansion_interval: int = dataclasses.field(default=40, metadata={"help": "t: test an expansion every t optimizer steps"})
    max_rank: int | None = dataclasses.field(default=None, metadata={"help": "upper bound of any module's rank (None: none)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the initial and trial A rows"})

    def __post_init__(self) -> None:
        if self.expansion_interval < 1:
            raise UserError(f"selora: expansion_interval must be >= 1, got {self.expansion_interval}")
        if self.max_rank is not None and self.max_rank < 1:
            raise UserError(f"selora: max_rank must be >= 1 or None, got {self.max_rank}")
        if not self.expansion_threshold >= 0:
            raise UserError(f"selora: expansion_threshold must be >= 0 (inf to never grow), got {self.expansion_threshold}")


def _generator(seed: int, step: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 100_003 + index)


class SeLoRALinear(nn.Module):
    """``base(x) + scaling * B A dropout(x)`` with A, B stored as per-rank chunks that can grow."""

    def __init__(self, base: nn.Linear, *, scaling: float, dropout: float, generator: torch.Generator) -> None:
        super().__init__()
        self.base = base
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        self._trial: tuple[torch.Tensor, torch.Tensor] | None = None
        self.grow(self.new_row(generator))

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def rank(self) -> int:
        return len(self.lora_A)

    @property
    def _dtype(self) -> torch.dtype:
        return torch.float64 if self.base.weight.dtype == torch.float64 else torch.float32

    def new_row(self, generator: torch.Generator) -> torch.Tensor:
        """A kaiming-uniform row of A (``a=sqrt(5)``, as ``nn.Linear`` and peft): U(-1/sqrt(in), 1/sqrt(in))."""
        bound = 1.0 / math.sqrt(self.base.in_features)
        row = torch.empty(1, self.base.in_features, dtype=self._dtype).uniform_(-bound, bound, generator=generator)
        return row.to(self.base.weight.device)

    def grow(self, a_row: torch.Tensor) -> tuple[nn.Parameter, nn.Parameter]:
        """Append rank chunk (A row ``a_row``, B column zero); the output is unchanged. Return the new parameters."""
        a = nn.Parameter(a_row.detach().clone().to(self._dtype))
        b = nn.Parameter(torch.zeros(self.base.out_features, 1, dtype=self._dtype, device=a.device))
        self.lora_A.append(a)
        self.lora_B.append(b)
        return a, b

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The concatenated ``A [r, in]`` and ``B [out, r]`` (with the trial chunk while a trial runs)."""
        a_parts, b_parts = list(self.lora_A), list(self.lora_B)
        if self._trial is not None:
            a_parts.append(self._trial[0])
            b_parts.append(self._trial[1])
        return torch.cat(a_parts, 0), torch.cat(b_parts, 1)

    def begin_trial(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Attach a trial expansion (random A row, zero B column, both requiring grad) and return it."""
        a = self.new_row(generator).requires_grad_(True)
        b = torch.zeros(self.base.out_features, 1, dtype=self._dtype, device=a.device, requires_grad=True)
        self._trial = (a, b)
        return a, b

    def end_trial(self) -> torch.Tensor:
        """Detach the trial expansion; return its A row (to :meth:`grow` with it if accepted)."""
        assert self._trial is not None
        row = self._trial[0].detach()
        self._trial = None
        return row

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        a, b = self.factors()
        delta = F.linear(F.linear(self.dropout(x).to(a.dtype), a), b) * self.scaling
        return result + delta.to(result.dtype)


def _block_and_kind(path: str) -> tuple[str, str]:
    """Split ``…transformer_blocks.0.attn2.to_out.0`` into block ``…transformer_blocks.0`` and kind ``attn2.to_out.0``."""
    parts = path.split(".")
    digits = [i for i, p in enumerate(parts[:-1]) if p.isdigit()]
    cut = digits[-1] + 1 if digits else len(parts) - 1
    return ".".join(parts[:cut]), ".".join(parts[cut:])


def _block_order(block: str) -> tuple[int, tuple[int, ...]]:
    """Sort key putting U-Net blocks in data-flow order (down, mid, up), then by index."""
    stage = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}.get(block.split(".")[0], 0)
    return stage, tuple(int(p) for p in block.split(".") if p.isdigit())


def _fisher_scores(modules: list[SeLoRALinear], loss_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``[n_modules, 2]``: FI-Score of the current factors and of the trial chunk (Eqs. 3-4)."""
    current = [list(m.lora_A) + list(m.lora_B) for m in modules]
    trials = [list(m._trial) for m in modules]  # type: ignore[arg-type]
    flat = [p for group in current + trials for p in group]
    with torch.enable_grad():
        losses = loss_fn()
    losses = losses.reshape(-1)
    squares = [torch.zeros((), dtype=torch.float64, device=p.device) for p in flat]
    for i, loss in enumerate(losses):
        grads = torch.autograd.grad(loss, flat, retain_graph=i < len(losses) - 1, allow_unused=True)
        for j, g in enumerate(grads):
            if g is not None:
                squares[j] += g.double().pow(2).sum()
    sums = torch.stack(squares) / len(losses)
    scores, pos = [], 0
    for group in current + trials:
        scores.append(sums[pos : pos + len(group)].sum())
        pos += len(group)
    n = len(modules)
    return torch.stack([torch.stack(scores[:n]), torch.stack(scores[n:])], 1)


def _add_to_optimizer(optimizer: torch.optim.Optimizer, anchor: nn.Parameter, new: tuple[nn.Parameter, ...]) -> None:
    for group in optimizer.param_groups:
        if any(p is anchor for p in group["params"]):
            group["params"].extend(new)
            return
    raise RuntimeError("selora: the module's parameters are not in the optimizer; build it from method.param_groups()")


class SeLoRA(FineTuningMethod):
    """Self-expanding LoRA on the U-Net's (and optionally the text encoder's) attention projections."""

    name = "selora"
    config_class = SeLoRAConfig
    save_format = ArtefactKind.LORA
    config: SeLoRAConfig

    def __init__(self, config: SeLoRAConfig | None = None) -> None:
        super().__init__(config)
        #: ``"<component>.<module path>"`` -> module, in model order
        self.modules: dict[str, SeLoRALinear] = {}
        #: one entry per check: ``{"step": int, "ranks": {module: rank}}``
        self.rank_history: list[dict[str, Any]] = []

    def _targets(self) -> dict[str, list[str]]:
        targets = {"unet": self.config.target_modules}
        if self.config.train_text_encoder:
            targets["text_encoder"] = self.config.text_encoder_target_modules
        return targets

    def trains(self, component: str) -> bool:
        return component in self._targets()

    def apply(self, components: Any) -> None:
        freeze_all(components)
        self.modules = {}
        index = 0
        for cname, targets in self._targets().items():
            model = getattr(components, cname)
            check_target_modules(model, targets, f"selora on the {cname}")
            paths = target_module_names(model, targets)
            if not paths:
                raise UserError(f"selora on the {cname}: targets {targets} match no nn.Linear layer (SeLoRA wraps Linear layers)")
            for path in paths:
                parent_name, _, child = path.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                wrapped = SeLoRALinear(
                    getattr(parent, child),
                    scaling=self.config.lora_alpha,
                    dropout=self.config.lora_dropout,
                    generator=_generator(self.config.seed, 0, index),
                )
                setattr(parent, child, wrapped)
                self.modules[f"{cname}.{path}"] = wrapped
                index += 1
        self.rank_history = [{"step": 0, "ranks": self.ranks()}]

    def ranks(self) -> dict[str, int]:
        """Current rank of every module."""
        return {name: m.rank for name, m in self.modules.items()}

    def _growable(self) -> list[int]:
        cap = self.config.max_rank
        return [i for i, m in enumerate(self.modules.values()) if cap is None or m.rank < cap]

    def expand(
        self, step: int, optimizer: torch.optim.Optimizer | None, loss_fn: Callable[[], torch.Tensor]
    ) -> dict[str, float]:
        """Test one expansion of every module below ``max_rank``; grow those whose FI ratio exceeds lambda.

        Returns the FI ratio (expanded / current) of every tested module. New parameters join
        ``optimizer`` (when given) in the param group of the module's existing parameters.
        """
        names = list(self.modules)
        tested = [(i, names[i], self.modules[names[i]]) for i in self._growable()]
        if not tested or math.isinf(self.config.expansion_threshold):
            return {}
        for i, _, module in tested:
            module.begin_trial(_generator(self.config.seed, step, i))
        try:
            scores = _fisher_scores([m for _, _, m in tested], loss_fn)
        finally:
            rows = [m.end_trial() for _, _, m in tested]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(scores)
        ratios: dict[str, float] = {}
        grown = 0
        for (_, name, module), row, (current, trial) in zip(tested, rows, scores.tolist(), strict=True):
            ratio = (current + trial) / current if current > 0 else (math.inf if trial > 0 else 1.0)
            ratios[name] = ratio
            if ratio > self.config.expansion_threshold:
                anchor = module.lora_A[0]
                new = module.grow(row)
                grown += 1
                if optimizer is not None:
                    _add_to_optimizer(optimizer, anchor, new)
        logger.info("selora step %d: %d of %d modules grew; total rank %d", step, grown, len(tested), sum(self.ranks().values()))
        return ratios

    def after_optimizer_step(
        self, step: int, components: Any, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]
    ) -> None:
        if step % self.config.expansion_interval:
            return
        self.expand(step, optimizer, lambda: loss_fn().mean())
        self.rank_history.append({"step": step, "ranks": self.ranks()})

    def trainable_state_dict(self, components: Any) -> dict[str, torch.Tensor]:
        state = super().trainable_state_dict(components)
        state[_RANKS_KEY] = torch.tensor([m.rank for m in self.modules.values()], dtype=torch.int64)
        state[_HISTORY_KEY] = torch.tensor(
            [[h["step"], *h["ranks"].values()] for h in self.rank_history], dtype=torch.int64
        ).reshape(len(self.rank_history), 1 + len(self.modules))
        return state

    def load_trainable_state_dict(self, components: Any, state: dict[str, torch.Tensor]) -> None:
        """Grow every module to its checkpointed rank, then load the factors (call before building the optimizer)."""
        state = dict(state)
        ranks = state.pop(_RANKS_KEY, None)
        history = state.pop(_HISTORY_KEY, None)
        if ranks is None or history is None or len(ranks) != len(self.modules):
            raise UserError(
                f"selora checkpoint does not fit: it records {'no' if ranks is None else len(ranks)} module ranks, "
                f"this model has {len(self.modules)} SeLoRA modules"
            )
        for module, rank in zip(self.modules.values(), ranks.tolist(), strict=True):
            while module.rank < rank:
                module.grow(torch.zeros(1, module.base.in_features, device=module.base.weight.device))
        copy_into(trainable_named_parameters(components), state, what="selora checkpoint")
        names = list(self.modules)
        self.rank_history = [{"step": int(row[0]), "ranks": dict(zip(names, map(int, row[1:]), strict=True))} for row in history.tolist()]

    def export_state(self, component: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """An ordinary peft LoRA of one component: state dict (``<path>.lora_A.weight`` ...) and adapter metadata."""
        from peft import LoraConfig

        prefix = f"{component}."
        layers: dict[str, torch.Tensor] = {}
        rank_pattern: dict[str, int] = {}
        for name, module in self.modules.items():
            if name.startswith(prefix):
                path = name[len(prefix) :]
                a, b = (t.detach().to("cpu").contiguous() for t in module.factors())
                layers[f"{path}.lora_A.weight"], layers[f"{path}.lora_B.weight"] = a, b
                rank_pattern[path] = module.rank
        common = collections.Counter(rank_pattern.values()).most_common(1)[0][0]
        alpha = self.config.lora_alpha
        config = LoraConfig(
            r=common,
            lora_alpha=alpha * common,
            lora_dropout=self.config.lora_dropout,
            target_modules=list(rank_pattern),
            rank_pattern=rank_pattern,
            alpha_pattern={p: alpha * r for p, r in rank_pattern.items()},
        )
        return layers, adapter_metadata(config)

    def save(self, components: Any, out_dir: str | Path, *, base_model: str) -> Path:
        out = ensure_output_dir(out_dir)
        exported = {c: self.export_state(c) for c in self._targets()}
        te = exported.get("text_encoder", (None, None))
        save_lora_file(out, *exported["unet"], te[0], te[1])
        write_json_atomic(out / RANKS_FILE, {"final": self.ranks(), "history": self.rank_history})
        plot_rank_heatmap(self.ranks(), out / HEATMAP_FILE)
        self.write_method_file(components, out, base_model=base_model)
        logger.info("selora adapter (total rank %d) saved to %s", sum(self.ranks().values()), out)
        return out

    def load_saved(self, pipe: Any, path: Path) -> Any:
        return load_lora_file(pipe, path, self.name)


def plot_rank_heatmap(ranks: dict[str, int], path: Path) -> Path:
    """Rank-allocation heatmap: one panel per component, module kinds (rows) x blocks (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels: dict[str, dict[tuple[str, str], int]] = collections.defaultdict(dict)
    for name, rank in ranks.items():
        component, _, module_path = name.partition(".")
        panels[component][_block_and_kind(module_path)] = rank
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 3.2 * len(panels)), squeeze=False)
    for ax, (component, cells) in zip(axes[:, 0], panels.items(), strict=True):
        blocks = sorted(dict.fromkeys(b for b, _ in cells), key=_block_order)
        kinds = list(dict.fromkeys(k for _, k in cells))
        grid = np.full((len(kinds), len(blocks)), np.nan)
        for (block, kind), rank in cells.items():
            grid[kinds.index(kind), blocks.index(block)] = rank
        image = ax.imshow(grid, cmap="viridis", aspect="auto")
        middle = (np.nanmin(grid) + np.nanmax(grid)) / 2
        for (r, c), value in np.ndenumerate(grid):
            if not np.isnan(value):
                color = "black" if value > middle else "white"
                ax.text(c, r, str(int(value)), ha="center", va="center", color=color, fontsize=8)
        ax.set_yticks(range(len(kinds)), kinds, fontsize=8)
        ax.set_xticks(range(len(blocks)), [b.replace("transformer_blocks", "tb").replace("attentions", "attn") for b in blocks], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"SeLoRA rank allocation: {component} (input to output, left to right)")
        fig.colorbar(image, ax=ax, label="rank")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
