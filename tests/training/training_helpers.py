"""Helpers for the trainer tests: a tiny synthetic dataset writer and a private test method."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from hf_cxr_diffusion.io import ensure_output_dir
from hf_cxr_diffusion.methods.base import FineTuningMethod, MethodConfig, freeze_all
from hf_cxr_diffusion.training.config import TrainConfig


def tiny_config(model: Path, data: Path, out: Path, **kw: Any) -> TrainConfig:
    """A 2-step, 64 px training config on the tiny model (keywords override)."""
    base = dict(pretrained_model=str(model), dataset=str(data), output_dir=str(out), resolution=64, train_batch_size=2,
                max_train_steps=2, checkpointing_steps=0, final_reload_check=False, learning_rate=1e-3)
    return TrainConfig(**{**base, **kw})


@dataclasses.dataclass
class ConvOutConfig(MethodConfig):
    nan_at_step: int | None = dataclasses.field(default=None, metadata={"help": "test: poison the weights after this step"})


class ConvOutOnly(FineTuningMethod):
    """Train only the U-Net's final convolution."""

    name = "test_conv_out"
    config_class = ConvOutConfig
    save_format = "test_safetensors"

    def apply(self, components: Any) -> None:
        freeze_all(components)
        components.unet.conv_out.requires_grad_(True)

    def trains(self, component: str) -> bool:
        return component == "unet"

    def after_optimizer_step(self, step, components, optimizer, loss_fn) -> None:
        if self.config.nan_at_step == step:
            with torch.no_grad():
                components.unet.conv_out.weight.fill_(float("nan"))

    def save(self, components: Any, output_dir: str | Path, *, base_model: str) -> Path:
        out = ensure_output_dir(output_dir)
        save_file({k: v.contiguous() for k, v in self.trainable_state_dict(components).items()}, str(out / "conv_out.safetensors"))
        self.write_method_file(components, out, base_model=base_model)
        return out

    def load_saved(self, pipe: Any, path: Path) -> Any:
        raise NotImplementedError


class RecordingConvOut(ConvOutOnly):
    """ConvOutOnly that records what ``loss_fn()`` returns after every optimizer step."""

    name = "test_recording"

    def __init__(self, config: ConvOutConfig | None = None) -> None:
        super().__init__(config)
        self.hook_losses: list[torch.Tensor] = []

    def after_optimizer_step(self, step, components, optimizer, loss_fn) -> None:
        self.hook_losses.append(loss_fn().detach().clone())


@dataclasses.dataclass
class DecoderConfig(MethodConfig):
    recon_weight: float | None = dataclasses.field(default=1.0, metadata={"help": "test: weight of the reconstruction term (None: no term)"})


class DecoderOnly(FineTuningMethod):
    """Train the VAE's posterior and output convolutions, with a reconstruction term (the shape of #12's VAE fine-tuning).

    The diffusion loss reaches only the encoder side (``quant_conv``); the decoder learns only through the term.
    """

    name = "test_decoder"
    config_class = DecoderConfig
    save_format = "test_safetensors"

    def __init__(self, config: DecoderConfig | None = None) -> None:
        super().__init__(config)
        self.calls: list[dict[str, torch.Tensor]] = []

    def apply(self, components: Any) -> None:
        freeze_all(components)
        components.vae.quant_conv.requires_grad_(True)
        components.vae.decoder.conv_out.requires_grad_(True)

    def trains(self, component: str) -> bool:
        return component == "vae"

    def auxiliary_loss(self, components, pixels, latents):
        if self.config.recon_weight is None:
            return None
        recon = components.vae.decode(latents).sample
        term = self.config.recon_weight * torch.nn.functional.mse_loss(recon.float(), pixels.float())
        self.calls.append({"pixels": pixels.detach().clone(), "latents": latents.detach().clone(), "term": term.detach()})
        return term

    save = ConvOutOnly.save
    load_saved = ConvOutOnly.load_saved




SHAPES = ("disc", "square", "bar", "ring")


def shape_image(kind: str, size: int, seed: int) -> np.ndarray:
    """A grey 'X-ray-like' image: a vertical gradient plus one bright shape, as uint8 RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.2 + 0.3 * yy + 0.05 * rng.standard_normal((size, size))
    cy, cx = rng.uniform(0.3, 0.7, 2)
    r = np.hypot(yy - cy, xx - cx)
    mask = {
        "disc": r < 0.2,
        "ring": (r > 0.12) & (r < 0.22),
        "square": (abs(yy - cy) < 0.15) & (abs(xx - cx) < 0.15),
        "bar": abs(xx - cx) < 0.06,
    }[kind]
    img = np.clip(img + 0.5 * mask, 0, 1)
    return np.repeat((img * 255).astype(np.uint8)[..., None], 3, axis=2)


def write_dataset(folder: Path, splits: dict[str, int], size: int = 64, columns=("image", "prompt")) -> Path:
    """A folder readable by ``datasets.load_dataset(str(folder))``: one parquet shard per split."""
    from datasets import Dataset, Image
    from PIL import Image as PILImage

    (folder / "data").mkdir(parents=True, exist_ok=True)
    offset = 0
    for split, n in splits.items():
        kinds = [SHAPES[(i + offset) % len(SHAPES)] for i in range(n)]
        data = {
            "image": [PILImage.fromarray(shape_image(k, size, 1000 + offset + i)) for i, k in enumerate(kinds)],
            "prompt": [f"chest x-ray with a {k}" for k in kinds],
            "labels": [[SHAPES.index(k)] for k in kinds],
        }
        ds = Dataset.from_dict({c: data[c] for c in columns if c in data})
        if "image" in columns:
            ds = ds.cast_column("image", Image())
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
        offset += n
    return folder


