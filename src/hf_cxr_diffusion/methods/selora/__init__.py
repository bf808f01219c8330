"""SeLoRA (Mao et al.), peft-style: options in :mod:`.config`, the layer in :mod:`.layer`, the
Fisher test in :mod:`.fisher`, the method (expansion, optimizer surgery, export) in :mod:`.method`,
the checkpoint format in :mod:`.state`, the rank heatmaps in :mod:`.heatmap`."""

from __future__ import annotations

from hf_cxr_diffusion.methods.selora.config import SeLoRAConfig
from hf_cxr_diffusion.methods.selora.layer import SeLoRALinear, row_generator
from hf_cxr_diffusion.methods.selora.method import HEATMAP_FILE, RANKS_FILE, SeLoRA

__all__ = ["HEATMAP_FILE", "RANKS_FILE", "SeLoRA", "SeLoRAConfig", "SeLoRALinear", "row_generator"]
