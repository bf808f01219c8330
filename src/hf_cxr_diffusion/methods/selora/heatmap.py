"""SeLoRA's rank-allocation heatmaps in the paper's layout (Figs. 3 and 4), drawn by :func:`hf_cxr_diffusion.plots.plot_heatmaps`.

* text encoder (Fig. 3): rows q, k, v, out, fc1, fc2; columns the encoder layers 0..N-1;
* U-Net attention (Fig. 4): rows attn1_{q,k,v,out} (self-attention) and attn2_{q,k,v,out}
  (cross-attention); columns the attention blocks from input to output, labelled as in the paper
  (``d<block><attention>``, ``mid``, ``u<block><attention>``; ``.<k>`` for a block's k-th
  transformer layer when there are several);
* every other adapted U-Net ``nn.Linear`` (feed-forward, time embedding, ResNet ``time_emb_proj``):
  one more panel, module kind x block, which the paper does not show.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from hf_cxr_diffusion.plots import HeatmapPanel, plot_heatmaps

TEXT_ENCODER_ROWS = ("q", "k", "v", "out", "fc1", "fc2")
UNET_ATTENTION_ROWS = tuple(f"attn{i}_{p}" for i in (1, 2) for p in ("q", "k", "v", "out"))

_TEXT = re.compile(r"(?:.*\.)?layers\.(\d+)\.(?:self_attn\.(q|k|v|out)_proj|mlp\.(fc1|fc2))")
_ATTENTION = re.compile(
    r"(?:(down|up)_blocks\.(\d+)|(mid)_block)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.(attn[12])\.(to_q|to_k|to_v|to_out\.0)"
)
_STAGE = {"down": 0, "mid": 1, "up": 2}


def _attention_column(stage: str, block: str | None, attention: str, layer: str) -> tuple[tuple[int, int, int, int], str]:
    label = "mid" if stage == "mid" else f"{stage[0]}{block}{attention}"
    if stage == "mid" and attention != "0":
        label += attention
    if layer != "0":
        label += f".{layer}"
    return (_STAGE[stage], int(block or 0), int(attention), int(layer)), label


_CONTAINERS = ("resnets", "attentions", "layers", "upsamplers", "downsamplers")


def _block_and_kind(path: str) -> tuple[str, str]:
    """Split ``…resnets.1.time_emb_proj`` into block ``…resnets.1`` and kind ``time_emb_proj`` (``…ff.net.2``: kind ``ff.net.2``)."""
    parts = path.split(".")
    cuts = [i + 1 for i in range(1, len(parts) - 1) if parts[i].isdigit() and (parts[i - 1].endswith("blocks") or parts[i - 1] in _CONTAINERS)]
    cut = cuts[-1] if cuts else len(parts) - 1
    return ".".join(parts[:cut]), ".".join(parts[cut:])


def _grid(cells: dict[tuple[str, str], int], rows: list[str], columns: list[str]) -> np.ndarray:
    grid = np.full((len(rows), len(columns)), np.nan)
    for (row, column), rank in cells.items():
        grid[rows.index(row), columns.index(column)] = rank
    return grid


def rank_panels(ranks: dict[str, int]) -> list[HeatmapPanel]:
    """The heatmap panels of per-module ranks keyed ``"<component>.<module path>"`` (empty panels left out)."""
    text: dict[tuple[str, str], int] = {}
    attention: dict[tuple[str, str], int] = {}
    attention_order: dict[str, tuple[int, int, int, int]] = {}
    other: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
    for name, rank in ranks.items():
        component, _, path = name.partition(".")
        if component == "text_encoder" and (m := _TEXT.fullmatch(path)):
            text[(m.group(2) or m.group(3), m.group(1))] = rank
            continue
        if component == "unet" and (m := _ATTENTION.fullmatch(path)):
            stage = m.group(1) or m.group(3)
            order, label = _attention_column(stage, m.group(2), m.group(4), m.group(5))
            attention_order[label] = order
            projection = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "out"}[m.group(7)]
            attention[(f"{m.group(6)}_{projection}", label)] = rank
            continue
        block, kind = _block_and_kind(path)
        other[component][(kind, block)] = rank
    panels = []
    if text:
        rows = [r for r in TEXT_ENCODER_ROWS if any(k[0] == r for k in text)]
        columns = sorted({c for _, c in text}, key=int)
        panels.append(HeatmapPanel("SeLoRA rank: text encoder (paper Fig. 3)", rows, columns, _grid(text, rows, columns),
                                   xlabel="encoder layer", ylabel="weight"))
    if attention:
        rows = [r for r in UNET_ATTENTION_ROWS if any(k[0] == r for k in attention)]
        columns = sorted(attention_order, key=attention_order.__getitem__)
        panels.append(HeatmapPanel("SeLoRA rank: U-Net attention (paper Fig. 4), input to output", rows, columns,
                                   _grid(attention, rows, columns), xlabel="attention block", ylabel="weight"))
    for component, cells in other.items():
        rows = list(dict.fromkeys(k for k, _ in cells))
        columns = list(dict.fromkeys(b for _, b in cells))
        short = [c.replace("transformer_blocks", "tb").replace("attentions", "attn") or "(top)" for c in columns]
        panels.append(HeatmapPanel(f"SeLoRA rank: other {component} nn.Linear layers (not in the paper's figures)", rows, short,
                                   _grid(cells, rows, columns), xlabel="block", ylabel="layer"))
    return panels


def plot_rank_heatmap(ranks: dict[str, int], path: str | Path) -> Path:
    """Write the rank heatmaps of ``ranks`` (``"<component>.<module path>" -> rank``) as a PNG."""
    return plot_heatmaps(rank_panels(ranks), path, colorbar_label="rank")
