"""Generation's device options on CPU: the batched path, the dtype choice per device, channels-last and torch.compile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from generation_helpers import PLAN, pixels

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.generation import generate
from hf_cxr_diffusion.generation.generator import prepare_for_device, resolve_dtype

OPTS = dict(scheduler="dpm", steps=3, guidance=4.0, seed=11)
#: grey levels (of 255) a batched call may differ by from one image per call on CPU (batched convolutions round
#: differently); measured max 1 on the tiny model
BATCH_TOLERANCE = 2


@pytest.fixture(scope="module")
def per_image(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CPU default: one image per pipeline call (bit-identical whatever the batch size)."""
    return generate(tiny_model_dir, PLAN, tmp_path_factory.mktemp("gen") / "per-image", batch_size=4, **OPTS)


def count_pipeline_calls(monkeypatch) -> list[int]:
    """Prompts per pipeline call from here on."""
    from diffusers import StableDiffusionPipeline

    calls: list[int] = []
    real = StableDiffusionPipeline.__call__

    def spy(self, *args, prompt=None, **kwargs):
        calls.append(len(prompt))
        return real(self, *args, prompt=prompt, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", spy)
    return calls


def test_batched_path_gives_the_per_image_images_within_tolerance(per_image, tiny_model_dir, tmp_path, monkeypatch):
    calls = count_pipeline_calls(monkeypatch)
    batched = generate(tiny_model_dir, PLAN, tmp_path / "batched", batch_size=3, batch_invariant=False, **OPTS)
    assert calls == [3, 1]  # true batching: one denoising loop per batch
    pa, pb = pixels(per_image, np.int16), pixels(batched, np.int16)
    assert len(pa) == len(pb) == len(PLAN.items)
    for a, b in zip(pa, pb):
        assert a.std() > 0 and np.abs(a - b).max() <= BATCH_TOLERANCE
    assert not np.array_equal(pa[0], pa[2])  # the tolerance is far below what a different seed changes


def test_per_image_is_the_cpu_default(tiny_model_dir, tmp_path, monkeypatch):
    calls = count_pipeline_calls(monkeypatch)
    generate(tiny_model_dir, PLAN, tmp_path / "default", batch_size=3, **OPTS)
    assert calls == [1, 1, 1, 1]


def test_dtype_resolves_per_device(monkeypatch, caplog):
    for choice in ("fp32", "auto", "fp16", "bf16"):
        assert resolve_dtype(choice, torch.device("cpu")) is torch.float32
    assert "--dtype fp16 ignored on cpu" in caplog.text
    cuda = torch.device("cuda")
    for supported, auto in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, s=supported, **k: s)
        assert resolve_dtype("auto", cuda) is auto
        assert resolve_dtype("fp16", "cuda") is torch.float16
        assert resolve_dtype("fp32", cuda) is torch.float32
    with pytest.raises(UserError, match="no bfloat16 support"):
        resolve_dtype("bf16", cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("bf16", cuda) is torch.bfloat16
    with pytest.raises(UserError, match="--dtype 'fp8' is not one of fp32, fp16, bf16, auto"):
        resolve_dtype("fp8", cuda)


def test_cuda_layout_is_channels_last_and_cpu_is_left_alone(tiny_model_dir):
    from hf_cxr_diffusion.models.pipeline import build_pipeline

    def conv_weight(module):
        return next(m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d))

    pipe = build_pipeline(tiny_model_dir, None, "dpm", torch.float32, "cpu")
    prepare_for_device(pipe, torch.device("cpu"))
    assert conv_weight(pipe.unet).is_contiguous()
    prepare_for_device(pipe, torch.device("cuda"))  # layout only: the CPU tensors stay on the CPU
    for module in (pipe.unet, pipe.vae):
        weight = conv_weight(module)
        assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def test_torch_compile_compiles_the_unet_and_keeps_the_images(per_image, tiny_model_dir, tmp_path, monkeypatch):
    """``torch_compile`` reaches ``nn.Module.compile`` of the U-Net and the run's identity; TorchDynamo's eager
    backend stands in for inductor (no C++ build in a unit test), so the traced graph itself runs."""
    compiled = []
    real = torch.nn.Module.compile

    def compile_eager(self, *args, **kwargs):
        compiled.append(type(self).__name__)
        return real(self, *args, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eager)
    torch._dynamo.reset()
    out = generate(tiny_model_dir, PLAN, tmp_path / "compiled", batch_size=4, torch_compile=True, **OPTS)
    torch._dynamo.reset()
    assert compiled == ["UNet2DConditionModel"]
    for a, b in zip(pixels(per_image, np.int16), pixels(out, np.int16)):
        assert np.abs(a - b).max() <= BATCH_TOLERANCE
    from hf_cxr_diffusion import runs

    assert runs.read_record(out)["config"]["torch_compile"] is True


def test_cli_passes_dtype_and_torch_compile(tiny_model_dir, monkeypatch, tmp_path):
    import hf_cxr_diffusion.generation as generation
    from hf_cxr_diffusion.cli import main

    seen = {}
    monkeypatch.setattr(generation, "generate", lambda *a, **k: seen.update(k) or tmp_path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("normal chest x-ray\n")
    args = ["generate", "--pretrained-model", str(tiny_model_dir), "--prompts-file", str(prompts), "--output-dir",
            str(tmp_path / "out")]
    assert main([*args, "--dtype", "auto", "--torch-compile"]) == 0
    assert seen["dtype"] == "auto" and seen["torch_compile"] is True
    assert main(args) == 0
    assert seen["dtype"] == "fp32" and seen["torch_compile"] is False
