"""Pluggable fine-tuning methods (peft-style): one module per method, one registry line each.

``get_method(name, config)`` builds one; ``load_adapter(pipe, path)`` applies a saved artefact.
"""

from __future__ import annotations

from hf_cxr_diffusion.artefacts import METHOD_FILE
from hf_cxr_diffusion.methods.base import FineTuningMethod, MethodConfig
from hf_cxr_diffusion.methods.loading import load_adapter
from hf_cxr_diffusion.methods.registry import METHODS, get_method

__all__ = ["METHODS", "METHOD_FILE", "FineTuningMethod", "MethodConfig", "get_method", "load_adapter"]
