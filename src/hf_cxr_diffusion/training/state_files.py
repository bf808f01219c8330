"""Pickle-free state files of a checkpoint: a nested state's tensors in ``<name>.safetensors``, the structure
around them (dicts, lists, tuples, numbers, strings, numpy arrays) in tagged JSON ``<name>.json``.

Reading them never runs code, whatever the file holds (:mod:`.checkpoints` owns the folder that holds them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_cxr_diffusion.errors import UserError

TENSORS_SUFFIX, STRUCTURE_SUFFIX = ".safetensors", ".json"


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().to("cpu").clone().contiguous()
        return {"$tensor": key}
    if isinstance(value, np.ndarray):
        return {"$ndarray": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"$dict": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint (tensors, numbers, strings, lists, dicts only)")


def _decode(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "$tensor" in value:
        return tensors[value["$tensor"]]
    if "$ndarray" in value:
        return np.asarray(value["$ndarray"], dtype=np.dtype(value["dtype"]))
    if "$tuple" in value:
        return tuple(_decode(v, tensors) for v in value["$tuple"])
    if "$dict" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["$dict"]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def tree_files(name: str) -> tuple[str, str]:
    """The two files of the state ``name``: its tensors and its structure."""
    return name + TENSORS_SUFFIX, name + STRUCTURE_SUFFIX


def save_tree(value: Any, folder: Path, name: str) -> None:
    """Store a nested state (dicts, lists, tuples, numbers, tensors, numpy arrays) as ``name.safetensors`` + ``name.json``."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(value, tensors)
    tensor_file, structure_file = tree_files(name)
    save_file(tensors, str(folder / tensor_file))
    (folder / structure_file).write_text(json.dumps(structure), encoding="utf-8")


def load_tree(folder: Path, name: str) -> Any:
    """Inverse of :func:`save_tree` (no pickle: safetensors and JSON only)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensor_file, structure_file = tree_files(name)
    for file in (tensor_file, structure_file):
        if not (folder / file).is_file():
            raise UserError(f"checkpoint {folder} lacks {file}; it was written by an older version or is incomplete. "
                            "Resume from a checkpoint of this version or start a new --output-dir")
    try:
        return _decode(json.loads((folder / structure_file).read_text(encoding="utf-8")), load_file(str(folder / tensor_file)))
    except (SafetensorError, ValueError, KeyError, OSError) as err:
        raise UserError(f"checkpoint {folder}: {name} state is unreadable ({type(err).__name__}: {err})") from err
