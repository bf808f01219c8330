"""A LoRA training output in the kohya-ss / A1111 / ComfyUI key format: ``export_kohya(adapter, output)``.

Kohya's format names each adapted module by its dotted path with ``_`` for ``.`` under a component
prefix (``lora_unet_`` for the U-Net, ``lora_te_`` for CLIP's ``text_model``) and stores, per module,
``<name>.lora_down.weight`` (peft's A), ``<name>.lora_up.weight`` (B) and a scalar ``<name>.alpha`` whose
ratio to the rank is the LoRA scale (Hu et al. 2022: ``W + alpha / r * B A``). diffusers'
``load_lora_weights`` converts this format back. DoRA's magnitude vectors have no agreed kohya
spelling, so DoRA adapters are refused.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.artefacts import ArtefactKind, read_training_output
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import atomic_path

#: diffusers' LoRA file component prefix -> kohya prefix
KOHYA_PREFIXES: dict[str, str] = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
#: suffixes of the down (A) / up (B) matrices in the LoRA files diffusers and peft write
_DOWN_UP = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
)
_METADATA_KEY = "lora_adapter_metadata"


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's ``rank_pattern`` / ``alpha_pattern`` lookup: the first key matching the end of ``module``."""
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def _module_alpha(config: dict[str, Any], module: str, rank: int) -> float:
    """The kohya ``alpha`` giving peft's scale for ``module``: ``lora_alpha`` (/ r), or ``* sqrt(r)`` with rsLoRA."""
    alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", rank)))
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


def kohya_state_dict(tensors: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """Kohya keys for the tensors of a diffusers LoRA file (``metadata``: its adapter configs by component)."""
    import torch

    out: dict[str, Any] = {}
    for key, down in tensors.items():
        suffix = next((pair for pair in _DOWN_UP if key.endswith(pair[0])), None)
        if suffix is None:
            continue
        component, _, module = key[: -len(suffix[0])].partition(".")
        if component not in KOHYA_PREFIXES:
            raise UserError(f"LoRA tensor {key}: component {component!r} has no kohya prefix ({', '.join(KOHYA_PREFIXES)})")
        up = tensors[key[: -len(suffix[0])] + suffix[1]]
        if component == "text_encoder" and not module.startswith("text_model."):
            module = f"text_model.{module}"
        config = {k.partition(".")[2]: v for k, v in metadata.items() if k.startswith(f"{component}.")}
        name = KOHYA_PREFIXES[component] + module.replace(".", "_")
        out[f"{name}.lora_down.weight"] = down.contiguous()
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(_module_alpha(config, module.removeprefix("text_model."), down.shape[0]))
    return out


def export_kohya(adapter: str | Path, output: str | Path) -> Path:
    """Write the LoRA of training output ``adapter`` as one kohya-format ``.safetensors`` file ``output``.

    Args:
        adapter: a LoRA / SeLoRA / DyLoRA / AdaLoRA training output folder (a diffusers LoRA file).
        output: the ``.safetensors`` file to write (atomically), outside ``adapter``.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    source = read_training_output(adapter, require_method_file=False)
    target = Path(output)
    if source.kind is not ArtefactKind.LORA:
        raise UserError(f"{source.path} holds a {source.kind.value} artefact; --format kohya needs a LoRA-family adapter")
    if target.suffix != ".safetensors":
        raise UserError(f"--output {target} must end in .safetensors")
    if target.resolve().is_relative_to(source.path.resolve()):
        raise UserError(f"--output {target} is inside the training output {source.path}; write it elsewhere")
    with safe_open(str(source.weights_path), framework="pt") as handle:
        metadata = json.loads((handle.metadata() or {}).get(_METADATA_KEY, "{}"))
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if any("magnitude" in key for key in tensors) or any(metadata.get(f"{c}.use_dora") for c in KOHYA_PREFIXES):
        raise UserError(f"{source.path} is a DoRA adapter: the kohya format has no agreed key for its magnitudes; "
                        "publish it in the diffusers format instead")
    converted = kohya_state_dict(tensors, metadata)
    if not converted:
        raise UserError(f"{source.weights_path} holds no LoRA down/up matrices")
    with atomic_path(target) as tmp:
        save_file(converted, str(tmp), metadata={"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1",
                                                  "hf_cxr_diffusion_source_sha256": source.sha256})
    return target
