"""Load any saved fine-tuning artefact back onto a base pipeline: ``load_adapter(pipe, path)``.

``path`` is a training output folder (:func:`hf_cxr_diffusion.artefacts.read_training_output`), or
a bare diffusers LoRA folder (no ``cxr_method.json``, loaded as a LoRA):

* lora / dora / selora: ``pipe.load_lora_weights(path)`` (diffusers LoRA file + adapter metadata),
  plus the text encoder's DoRA magnitudes that diffusers 0.42 drops;
* bitfit / difffit: the tensors of ``cxr_adapter.safetensors`` are copied onto the pipeline
  (DiffFit first installs its scale modules);
* full: a complete pipeline, not an adapter: a UserError says to load it with
  ``DiffusionPipeline.from_pretrained(path)``.

Every module of the returned pipeline is in eval mode (LoRA dropout off), so the same seed
always gives the same image. A base model that does not fit the adapter (missing modules, other
shapes) raises a UserError naming both.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hf_cxr_diffusion.artefacts import ArtefactKind, read_training_output
from hf_cxr_diffusion.errors import UserError

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


def load_adapter(pipe: DiffusionPipeline, path: str | Path) -> DiffusionPipeline:
    """Apply a saved fine-tuning artefact to a base pipeline, in place, and put every module in eval mode.

    Args:
        pipe: the base pipeline the adapter was trained from (``DiffusionPipeline.from_pretrained``).
        path: a training output folder (:func:`~hf_cxr_diffusion.artefacts.read_training_output`) or a
            bare diffusers LoRA folder.

    Returns:
        ``pipe``, with the adapter applied and every ``torch.nn.Module`` component in eval mode (peft
        injects adapter layers in training mode: their dropout would stay on while sampling).
    """
    import torch

    from hf_cxr_diffusion.methods.registry import get_method

    out = read_training_output(path, require_method_file=False)
    if out.method is None and out.kind is not ArtefactKind.LORA:
        raise UserError(f"{out.path} is a diffusers pipeline folder, not an adapter: load it with DiffusionPipeline.from_pretrained")
    method = get_method(out.method or "lora", out.config)
    pipe = method.load_saved(pipe, out.path)
    for module in getattr(pipe, "components", {}).values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe
