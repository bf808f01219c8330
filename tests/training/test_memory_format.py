"""channels-last U-Net (CUDA only) never changes what is saved, and --torch-compile trains like eager on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_helpers import tiny_config

from hf_cxr_diffusion.methods.base import trainable_named_parameters
from hf_cxr_diffusion.methods.registry import get_method
from hf_cxr_diffusion.models.loading import load_components, to_channels_last
from hf_cxr_diffusion.training.trainer import train


def _safetensors_bytes(folder: Path) -> dict[str, tuple[dict, bytes]]:
    """Every safetensors file's header (parsed: safetensors writes ``__metadata__`` keys in hash order, which
    varies between saves) and its tensor bytes, exactly."""
    out = {}
    for p in sorted(folder.rglob("*.safetensors")):
        raw = p.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        out[str(p.relative_to(folder))] = (json.loads(raw[8 : 8 + n]), raw[8 + n :])
    return out


def test_channels_last_only_on_cuda(tiny_model_dir: Path) -> None:
    c = load_components(tiny_model_dir)
    assert not to_channels_last(torch.device("cpu"), c.unet)
    assert all(p.is_contiguous() for p in c.unet.parameters())
    assert to_channels_last("cuda", c.unet)  # the layout change itself needs no GPU
    convs = [p for p in c.unet.parameters() if p.dim() == 4 and p.shape[2:] != (1, 1)]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs)


@pytest.mark.parametrize(("method", "config"), [("full", {}), ("lora", {"target_modules": ["to_q", "conv1"]}),
                                                 ("bitfit", {})])
def test_saving_a_channels_last_unet_writes_the_same_bytes(tiny_model_dir: Path, tmp_path: Path, method, config) -> None:
    c = load_components(tiny_model_dir)
    m = get_method(method, config or None)
    torch.manual_seed(0)
    m.apply(c)
    with torch.no_grad():  # trained-looking values (LoRA B starts at zero)
        for p in trainable_named_parameters(c).values():
            p.add_(torch.randn_like(p) * 0.01)
    m.save(c, tmp_path / "standard", base_model=str(tiny_model_dir))
    to_channels_last("cuda", c.unet)
    if method != "bitfit":  # biases are 1-D: no other layout
        assert any(not p.is_contiguous() for p in trainable_named_parameters(c).values())
    m.save(c, tmp_path / "channels_last", base_model=str(tiny_model_dir))
    standard, channels_last = _safetensors_bytes(tmp_path / "standard"), _safetensors_bytes(tmp_path / "channels_last")
    assert standard and standard == channels_last


def test_torch_compile_trains_like_eager(tiny_model_dir: Path, tiny_dataset_dir: Path, tmp_path: Path, monkeypatch) -> None:
    eager = train(tiny_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "eager", max_train_steps=3, seed=0))
    compiled_modules = []

    def compile_aot_eager(model, **kw):  # no C++ toolchain in the test: trace with dynamo, run aot_eager
        compiled_modules.append(model)
        return original(model, backend="aot_eager", **kw)

    original = torch.compile
    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    try:
        compiled = train(tiny_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "compiled", max_train_steps=3, seed=0,
                                     torch_compile=True))
    finally:
        torch._dynamo.reset()
    assert len(compiled_modules) == 1 and compiled_modules[0] is compiled.components.unet
    assert compiled.summary["config"]["torch_compile"] is True
    steps = [s for s, _ in eager.loss_history]
    assert steps == [s for s, _ in compiled.loss_history] == [1, 2, 3]
    assert [l for _, l in compiled.loss_history] == pytest.approx([l for _, l in eager.loss_history], rel=1e-4, abs=1e-5)
