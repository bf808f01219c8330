"""Rebuild ``phantom-base`` (:mod:`hf_cxr_diffusion.phantoms.base`) from seeds.

:func:`pretrain_base` rebuilds it from seeds with the project's own stages: phantom corpus
(:func:`~hf_cxr_diffusion.phantoms.corpus.make_phantoms`, real CheXpert label rows) ->
``prepare`` -> VAE trained to reconstruct (L1 + a small KL term, as SD's first stage without its
perceptual and adversarial terms) -> U-Net and text encoder trained together from scratch with
``cxr-diffusion train --method full`` on the frozen VAE's latents, captions dropped for 10% of the
images (classifier-free guidance, Ho & Salimans 2022).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_cxr_diffusion.artefacts import PIPELINE_INDEX_FILE
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import atomic_path, ensure_output_dir, write_json_atomic, write_text_atomic
from hf_cxr_diffusion.phantoms.base import (
    CAPTION_EXAMPLE,
    PHANTOM_BASE,
    RECORD_FILE,
    RESOLUTION,
    build_untrained_pipeline,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PretrainBaseConfig:
    """How :func:`pretrain_base` builds the phantom base pipeline.

    Args:
        seed: seed of the phantom corpus, the initial weights and every training draw.
        num_images: phantom radiographs drawn (CheXpert layout, real label rows); about 90% train.
        vae_steps: optimizer steps of the VAE's reconstruction training.
        vae_batch_size: images per VAE step.
        vae_learning_rate: AdamW peak learning rate of the VAE (cosine decay after a short warm-up).
        vae_kl_weight: weight of the KL term against the L1 reconstruction term.
        diffusion_steps: optimizer steps of the U-Net + text encoder training (the length of its cosine schedule).
        ship_step: the step whose EMA weights ship (its checkpoint is kept). Measured: LoRA on finding prompts
            (2,000 steps, lr 3e-3) reached class consistency 0.88 / 1.00 / 0.88 (No Finding / Cardiomegaly /
            Pleural Effusion) from the step-2000 weights but 0.19 / 0.56 / 0.75 from the step-5000 ones: the
            longer the from-scratch text encoder trains on acquisition captions, the less a fine-tune can move
            it, so the earlier weights play SD 1.5's role better.
        train_batch_size: images per diffusion step.
        learning_rate: AdamW peak learning rate of the U-Net and text encoder (cosine schedule).
        proportion_empty_prompts: share of images trained with an empty caption, so the model also
            learns the unconditional score that classifier-free guidance needs.
        ema_decay: EMA of the diffusion weights; the EMA weights are saved.
    """

    seed: int = dataclasses.field(default=0, metadata={"help": "seed of corpus, init and training draws"})
    num_images: int = dataclasses.field(default=16000, metadata={"help": "phantom radiographs to draw"})
    vae_steps: int = dataclasses.field(default=1000, metadata={"help": "VAE optimizer steps"})
    vae_batch_size: int = dataclasses.field(default=32, metadata={"help": "images per VAE step"})
    vae_learning_rate: float = dataclasses.field(default=1e-3, metadata={"help": "VAE peak learning rate"})
    vae_kl_weight: float = dataclasses.field(default=1e-6, metadata={"help": "weight of the VAE's KL term"})
    diffusion_steps: int = dataclasses.field(default=5000, metadata={"help": "U-Net + text encoder optimizer steps"})
    ship_step: int = dataclasses.field(default=2000, metadata={"help": "step whose EMA weights ship (its checkpoint is kept)"})
    train_batch_size: int = dataclasses.field(default=32, metadata={"help": "images per diffusion step"})
    learning_rate: float = dataclasses.field(default=5e-4, metadata={"help": "U-Net + text encoder peak learning rate"})
    proportion_empty_prompts: float = dataclasses.field(default=0.1, metadata={"help": "share of empty captions"})
    ema_decay: float = dataclasses.field(default=0.999, metadata={"help": "EMA decay of the diffusion weights"})

    def validate(self) -> PretrainBaseConfig:
        for name in ("num_images", "vae_steps", "vae_batch_size", "diffusion_steps", "train_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.ship_step <= self.diffusion_steps:
            raise UserError(f"--ship-step must lie in [1, --diffusion-steps={self.diffusion_steps}], got {self.ship_step}")
        for name in ("vae_learning_rate", "learning_rate", "vae_kl_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise UserError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if not 0.0 <= self.proportion_empty_prompts < 1.0:
            raise UserError(f"--proportion-empty-prompts must be in [0, 1), got {self.proportion_empty_prompts}")
        return self


# --------------------------------------------------------------------------- VAE stage
def _gray_images(ds) -> np.ndarray:
    """All images of a prepared split as an ``N x H x W`` uint8 array (the phantoms are grey)."""
    return np.stack([np.asarray(img.convert("L"), dtype=np.uint8) for img in ds["image"]])


def _to_pixels(gray: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(gray).float().div_(127.5).sub_(1.0)
    return x[:, None].expand(-1, 3, -1, -1)


def psnr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak range 2)."""
    mse = torch.mean((reference.double() - estimate.double().clamp(-1, 1)) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(4.0 / mse)


@torch.no_grad()
def reconstruction_psnr(vae, gray: np.ndarray, batch_size: int = 64) -> float:
    """PSNR of ``decode(mean of posterior)`` against the images, over the whole set."""
    vae.eval()
    sq, count = 0.0, 0
    for start in range(0, len(gray), batch_size):
        x = _to_pixels(gray[start : start + batch_size])
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        sq += torch.sum((x.double() - y.double()) ** 2).item()
        count += x.numel()
    return 10.0 * math.log10(4.0 / (sq / count))


def train_vae(vae, gray: np.ndarray, config: PretrainBaseConfig) -> list[tuple[int, float]]:
    """Reconstruction training: L1(decode(z), x) + ``kl_weight`` * KL(q(z|x) || N(0, I)), z a posterior sample."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(config.seed + 11)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate, weight_decay=0.0)
    warmup = max(1, config.vae_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, config.vae_steps) / config.vae_steps))
    )
    vae.train()
    history: list[tuple[int, float]] = []
    progress = tqdm(range(1, config.vae_steps + 1), desc="pretrain VAE")
    for step in progress:
        idx = torch.randint(0, len(gray), (config.vae_batch_size,), generator=gen).numpy()
        x = _to_pixels(gray[idx])
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        loss = (recon - x).abs().mean() + config.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 25 == 0 or step == config.vae_steps:
            history.append((step, float(loss.item())))
            progress.set_postfix(loss=f"{history[-1][1]:.4f}")
    vae.eval()
    return history


def acquisition_caption(params) -> str:
    """What a radiographer would say about a phantom apart from its findings (thresholds near the parameter terciles)."""
    words = ["Chest X-ray", "female" if params.female else "male"]
    words += ["small patient"] if params.scale < 0.955 else ["large patient"] if params.scale > 0.995 else []
    words += ["narrow chest"] if params.lung_lateral < 0.755 else ["broad chest"] if params.lung_lateral > 0.805 else []
    words += ["high diaphragm"] if params.base_y < 0.535 else ["low diaphragm"] if params.base_y > 0.565 else []
    words += ["tilted clockwise"] if params.rotation_deg > 1.5 else ["tilted counter-clockwise"] if params.rotation_deg < -1.5 else []
    brightness = (0.5 + params.exposure) ** params.gamma
    words += ["dark"] if brightness < 0.455 else ["bright"] if brightness > 0.525 else []
    words += ["low contrast"] if params.contrast < 0.95 else ["high contrast"] if params.contrast > 1.05 else []
    return ", ".join(words)


def caption_dataset(prepared: Path, corpus: Path, out: Path) -> Path:
    """The prepared training split re-captioned with :func:`acquisition_caption`; 10% of it is held out as ``test``."""
    from hf_cxr_diffusion.data.loading import load_split
    from hf_cxr_diffusion.phantoms.manifest import read_manifest

    captions = {r.path: acquisition_caption(r.params()) for r in read_manifest(corpus)}
    with atomic_path(out) as tmp:
        for split in ("train", "test"):
            ds = load_split(str(prepared), split).select_columns(["image", "source_path"])
            ds = ds.map(lambda row: {"prompt": captions[row["source_path"]]}, desc=f"captions ({split})")
            (tmp / "data").mkdir(parents=True, exist_ok=True)
            ds.to_parquet(str(tmp / "data" / f"{split}.parquet"))
    return out


@torch.no_grad()
def latent_scaling_factor(vae, gray: np.ndarray, batch_size: int = 64, limit: int = 2048) -> float:
    """1 / std of posterior-mean latents, as Stable Diffusion chose its 0.18215 (unit-variance latents)."""
    means = [vae.encode(_to_pixels(gray[s : s + batch_size])).latent_dist.mean for s in range(0, min(limit, len(gray)), batch_size)]
    return float(1.0 / torch.cat(means).std().item())


# --------------------------------------------------------------------------- the whole recipe
def _stage_done(path: Path) -> bool:
    return (path / ".complete").is_file()


def _mark_done(path: Path, info: dict[str, Any]) -> None:
    write_json_atomic(path / ".complete", info)


def pretrain_base(output_dir: str | Path, config: PretrainBaseConfig | None = None, *, work_dir: str | Path | None = None) -> Path:
    """Build the phantom base pipeline into ``output_dir`` (a diffusers folder + record + model card).

    Intermediate folders (corpus, prepared dataset, VAE, the diffusion training run with its
    checkpoints) live in ``work_dir`` (default ``<output_dir>-work``); a killed run picks up where it
    stopped when called again with the same arguments.
    """
    from hf_cxr_diffusion.data.preparation import prepare
    from hf_cxr_diffusion.data.loading import load_split
    from hf_cxr_diffusion.phantoms.corpus import make_phantoms
    from hf_cxr_diffusion.training import TrainConfig, train

    config = (config or PretrainBaseConfig()).validate()
    out = Path(output_dir)
    work = ensure_output_dir(Path(work_dir) if work_dir is not None else out.with_name(out.name + "-work"))
    record: dict[str, Any] = {"config": dataclasses.asdict(config), "resolution": RESOLUTION,
                              "caption_example": CAPTION_EXAMPLE, "stages": {}}
    cpu0, wall0 = time.process_time(), time.perf_counter()

    corpus = work / "corpus"
    if not _stage_done(corpus):
        make_phantoms(corpus, layout="chexpert", n=config.num_images, seed=config.seed, resolution=RESOLUTION)
        _mark_done(corpus, {"images": config.num_images})
    prepared = work / "prepared"
    if not _stage_done(prepared):
        prepare(corpus="chexpert", data_dir=corpus, output_dir=prepared, resolution=RESOLUTION, uncertain="ones",
                overwrite=True)
        _mark_done(prepared, {})
    captioned = work / "captioned"
    if not (captioned / "data" / "train.parquet").is_file():
        caption_dataset(prepared, corpus, captioned)
    train_split, test_split = load_split(str(prepared), "train"), load_split(str(prepared), "test")

    init = work / "init"
    if not _stage_done(init):
        pipe = build_untrained_pipeline(config.seed)
        gray, held_out = _gray_images(train_split), _gray_images(test_split)
        t0 = time.process_time()
        history = train_vae(pipe.vae, gray, config)
        pipe.vae.register_to_config(scaling_factor=latent_scaling_factor(pipe.vae, gray))
        vae_info = {"steps": config.vae_steps, "final_loss": history[-1][1], "cpu_seconds": round(time.process_time() - t0, 1),
                    "held_out_psnr_db": round(reconstruction_psnr(pipe.vae, held_out), 2), "held_out_images": len(held_out),
                    "scaling_factor": pipe.vae.config.scaling_factor}
        logger.info("VAE: held-out reconstruction PSNR %.2f dB on %d phantoms", vae_info["held_out_psnr_db"], len(held_out))
        with atomic_path(init) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            _mark_done(tmp, vae_info)
    record["stages"]["vae"] = json.loads((init / ".complete").read_text())

    run = work / "diffusion"
    result = train(TrainConfig(
        pretrained_model=str(init), dataset=str(captioned), output_dir=str(run), method="full",
        method_config={"components": ["unet", "text_encoder"]}, resolution=RESOLUTION, seed=config.seed,
        train_batch_size=config.train_batch_size, max_train_steps=config.diffusion_steps,
        learning_rate=config.learning_rate, lr_scheduler="cosine", lr_warmup_steps=max(1, config.diffusion_steps // 30),
        adam_weight_decay=0.0, use_ema=True, ema_decay=config.ema_decay,
        proportion_empty_prompts=config.proportion_empty_prompts,
        checkpointing_steps=config.ship_step, checkpoints_total_limit=None,
        resume_from_checkpoint="latest" if any(run.glob("checkpoint-*")) else None,
        validation_prompts=[CAPTION_EXAMPLE, "Chest X-ray, male, large patient, broad chest, dark", ""],
        num_validation_inference_steps=20, final_reload_check=False,
    ))
    record["stages"]["diffusion"] = {"steps": result.global_step, "final_loss": result.final_loss,
                                     "training_images": result.summary.get("num_train_images"),
                                     "wall_seconds": result.summary.get("wall_time_seconds")}
    record["stages"]["diffusion"]["shipped_step"] = config.ship_step
    record["cpu_seconds_this_call"] = round(time.process_time() - cpu0, 1)
    record["wall_seconds_this_call"] = round(time.perf_counter() - wall0, 1)
    return _ship(weights_at_step(run, init, config.ship_step, config.diffusion_steps), out, record)


def weights_at_step(run: Path, init: Path, step: int, last_step: int) -> Path:
    """The pipeline folder holding the EMA weights of ``run`` at ``step`` (the run itself at its last step)."""
    from diffusers import StableDiffusionPipeline

    from hf_cxr_diffusion.training.checkpoints import checkpoint_dir, read_ema_shadow

    if step == last_step:
        return run
    folder = run.with_name(f"{run.name}-ema-{step}")
    if not (folder / PIPELINE_INDEX_FILE).is_file():
        pipe = StableDiffusionPipeline.from_pretrained(str(init), safety_checker=None, requires_safety_checker=False)
        shadow = read_ema_shadow(checkpoint_dir(run, step))
        for name in ("unet", "text_encoder"):
            prefix = name + "."
            getattr(pipe, name).load_state_dict({k[len(prefix):]: v for k, v in shadow.items() if k.startswith(prefix)}, strict=True)
        with atomic_path(folder) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
    return folder


def _ship(run: Path, out: Path, record: dict[str, Any]) -> Path:
    """Copy the trained pipeline to ``out`` with fp16 weights, the record and the model card."""
    from diffusers import StableDiffusionPipeline

    import hf_cxr_diffusion

    pipe = StableDiffusionPipeline.from_pretrained(str(run), safety_checker=None, requires_safety_checker=False)
    record["version"] = hf_cxr_diffusion.__version__
    record["torch"] = torch.__version__
    record["command"] = (f"cxr-diffusion pretrain-base --output-dir {out.name} " +
                         " ".join(f"--{k.replace('_', '-')} {v}" for k, v in record["config"].items()))
    record["parameters"] = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "text_encoder", "vae")}
    ensure_output_dir(out.parent if str(out.parent) else Path("."))
    with atomic_path(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        _store_fp16(tmp)
        _drop_local_paths(tmp)
        write_json_atomic(tmp / RECORD_FILE, record)
        write_text_atomic(tmp / "README.md", model_card(record))
    logger.info("phantom base pipeline written to %s", out)
    return out


def _drop_local_paths(folder: Path) -> None:
    """Remove the ``_name_or_path`` diffusers records in every config (the training machine's folders)."""
    for path in sorted(folder.glob("*.json")) + sorted(folder.glob("*/config.json")):
        config = json.loads(path.read_text(encoding="utf-8"))
        if config.pop("_name_or_path", None) is not None:
            write_json_atomic(path, config)


def _store_fp16(folder: Path) -> None:
    """Rewrite every safetensors file under ``folder`` with fp16 tensors (diffusers loads them back as fp32)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for path in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, str(path), metadata=metadata)


def _cost(record: dict[str, Any]) -> str:
    if "cost" in record:
        c = record["cost"]
        return (f"VAE {c['vae_cpu_seconds'] / 60:.0f} CPU-min + diffusion about {c['diffusion_cpu_seconds_estimate'] / 60:.0f} CPU-min "
                f"({c['how']})")
    return f"{record['cpu_seconds_this_call'] / 60:.0f} CPU-min in the call that finished it ({record['wall_seconds_this_call'] / 60:.0f} min wall)"


def model_card(record: dict[str, Any]) -> str:
    """The shipped folder's model card: what it is, how it was made, and what it is not."""
    vae = record["stages"]["vae"]
    params = record.get("parameters", {})
    return f"""---
library_name: diffusers
tags: [phantom, chest-x-ray, test-fixture, not-for-medical-use]
pipeline_tag: text-to-image
---
# phantom-base: a phantom radiograph diffusion model for exercising hf-cxr-diffusion

**This is not a medical model.** It was trained only on procedurally drawn chest X-ray *phantoms*
(`hf_cxr_diffusion.phantoms`), never on a radiograph of a person. It exists so that the software's
fine-tuning, generation and metrics can be shown to work offline; nothing it generates says anything
about medical image quality.

It has Stable Diffusion 1.x's structure at {RESOLUTION} px (VAE with the 8x factor, cross-attention U-Net,
CLIP text encoder with CLIP's tokenizer, scaled-linear DDPM schedule) and plays the role Stable
Diffusion 1.5 plays before a chest X-ray fine-tune: its captions describe the patient and the acquisition
(e.g. `{CAPTION_EXAMPLE}`; empty for {record['config']['proportion_empty_prompts']:.0%} of the images) but never name a finding,
so it knows the phantoms' anatomy and listens to its text encoder, but does not know the findings vocabulary.

| component | parameters |
|---|---:|
""" + "".join(f"| {k} | {v:,} |\n" for k, v in params.items()) + f"""
- VAE: {vae['steps']} steps of L1 + KL reconstruction training; held-out reconstruction PSNR **{vae['held_out_psnr_db']} dB**
  on {vae['held_out_images']} phantoms; latent scaling factor {vae['scaling_factor']:.5f}.
- U-Net + text encoder: {record['stages']['diffusion']['steps']} steps from scratch on {record['stages']['diffusion']['training_images']} phantom images
  (cosine schedule), final training loss {record['stages']['diffusion']['final_loss']:.4f}; the EMA weights of step
  **{record['stages']['diffusion'].get('shipped_step', record['stages']['diffusion']['steps'])}** ship (`--ship-step`: a LoRA
  on finding prompts learns them far faster from there than from the end of the run, measured in `PretrainBaseConfig`'s docstring).
- CPU cost: {_cost(record)}.
- Weights stored in fp16; load with `DiffusionPipeline.from_pretrained(path)` or `--pretrained-model {PHANTOM_BASE}`.
- Rebuilt from seeds by `{record['command']}`
  (hf-cxr-diffusion {record['version']}, torch {record['torch']}); see `{RECORD_FILE}`.
"""
