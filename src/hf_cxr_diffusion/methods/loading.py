"""Load any saved fine-tuning artefact back onto a base pipeline: ``load_adapter(pipe, path)``.

``path`` is a training output folder holding :data:`~hf_cxr_diffusion.methods.base.METHOD_FILE`:

* lora / dora / selora: ``pipe.load_lora_weights(path)`` (diffusers LoRA file + adapter metadata);
* bitfit / difffit: the tensors of ``cxr_adapter.safetensors`` are copied onto the pipeline
  (DiffFit first installs its scale modules);
* full: a complete pipeline, not an adapter: a UserError says to load it with
  ``DiffusionPipeline.from_pretrained(path)``.

A base model that does not fit the adapter (missing modules, other shapes) raises a UserError
naming both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.methods.base import METHOD_FILE


def read_method_file(path: str | Path) -> dict[str, Any]:
    """The parsed :data:`METHOD_FILE` of a saved artefact folder (UserError if absent or broken)."""
    file = Path(path) / METHOD_FILE
    if not file.is_file():
        raise UserError(f"{path} has no {METHOD_FILE}: not a folder written by `cxr-diffusion train`")
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
        return {**info, "method": str(info["method"]), "config": dict(info.get("config") or {})}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"{file} is not a valid method file ({err}); re-save the model") from err


def load_adapter(pipe: Any, path: str | Path) -> Any:
    """Apply the fine-tuning artefact in ``path`` to base pipeline ``pipe`` (in place); return ``pipe``."""
    from hf_cxr_diffusion.methods.registry import get_method

    info = read_method_file(path)
    method = get_method(info["method"], info["config"])
    return method.load_saved(pipe, Path(path))
