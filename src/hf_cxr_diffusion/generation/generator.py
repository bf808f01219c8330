"""Seeded, sharded, resumable synthesis of a synthetic chest X-ray dataset.

Image ``i`` is always drawn from its own ``torch.Generator`` seeded ``seed + i``, so it does not
depend on the batch it falls in, on how many processes share the work (``accelerate``'s
``PartialState.split_between_processes``) or on whether the run was interrupted: a resumed run
skips the images already on disk (each PNG is written atomically and carries its own provenance).

Batched convolutions and group norms on CPU round differently from single-image ones, so
bit-identical images across batch sizes need one denoising call per image: that is the default
on CPU (``batch_invariant=None``); on CUDA images are batched for speed and may differ across
batch sizes in the last bits (seeds still give the same image content).

Defaults follow the DreamBooth/DenseNet study (DPM-Solver multistep, 50 steps, guidance 4.0).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.artefacts import (
    CARD_FILE,
    GENERATION_CONFIG_FILE,
    MANIFEST_FILE,
    SYNTHETIC_DATA_DIR,
    SYNTHETIC_IMAGES_DIR,
    TrainingOutput,
    read_training_output,
    write_manifest,
)
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.generation.prompts import PromptPlan
from hf_cxr_diffusion.generation.writer import (
    image_path,
    read_png_provenance,
    remove_stale_temporaries,
    save_png,
    write_dataset,
)
from hf_cxr_diffusion.hashing import sha256_json, sha256_pixels
from hf_cxr_diffusion.io import ensure_output_dir, write_json_atomic

logger = logging.getLogger(__name__)

#: ``--scheduler`` names -> diffusers scheduler classes
SCHEDULERS: dict[str, str] = {
    "dpm": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "ddpm": "DDPMScheduler",
}
DTYPES: tuple[str, ...] = ("fp32", "fp16", "bf16")
#: generation_config.json keys that must match for images to share a folder
IDENTITY_KEYS: tuple[str, ...] = (
    "base_model", "adapter_sha256", "adapter_method", "scheduler", "steps", "guidance", "negative_prompt",
    "seed", "height", "width", "dtype", "prompts_sha256", "label_names",
)  # fmt: skip


def resolve_dtype(dtype: str, device: Any) -> Any:
    """``--dtype`` as a torch dtype; half precision only on CUDA (fp32 on CPU)."""
    import torch

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if getattr(device, "type", str(device)) != "cuda":
        if dtype != "fp32":
            logger.warning("--dtype %s ignored on %s: generating in fp32", dtype, device)
        return torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def build_pipeline(
    pretrained_model: str | Path, adapter: TrainingOutput | None, scheduler: str, torch_dtype: Any, device: Any
) -> Any:
    """Base pipeline (or the full fine-tune) with the adapter applied by ``load_adapter`` and the chosen scheduler."""
    import diffusers

    from hf_cxr_diffusion.methods.loading import load_adapter
    from hf_cxr_diffusion.models.loading import load_pipeline

    if scheduler not in SCHEDULERS:
        raise UserError(f"--scheduler {scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    source = adapter.path if adapter is not None and not adapter.is_adapter else pretrained_model
    pipe = load_pipeline(source, torch_dtype=torch_dtype, safety_checker=None, requires_safety_checker=False)
    if adapter is not None and adapter.is_adapter:
        if adapter.base_model and str(adapter.base_model) != str(pretrained_model):
            logger.warning("adapter %s was trained on %s, applying it to %s", adapter.path, adapter.base_model, pretrained_model)
        try:
            load_adapter(pipe, adapter.path)
        except UserError as err:
            hint = f" ({adapter.base_model})" if adapter.base_model else ""
            raise UserError(f"{err}; pass the --pretrained-model it was trained on{hint}") from err
    pipe.scheduler = getattr(diffusers, SCHEDULERS[scheduler]).from_config(pipe.scheduler.config)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _prompts_digest(plan: PromptPlan) -> str:
    return sha256_json([[it.prompt, list(it.labels)] for it in plan.items])


def _prepare_folder(out: Path, config: dict[str, Any], overwrite: bool) -> None:
    """Check the folder holds nothing or images of the same parameters; clear it on ``overwrite``."""
    ours = [out / SYNTHETIC_IMAGES_DIR, out / SYNTHETIC_DATA_DIR, out / GENERATION_CONFIG_FILE, out / CARD_FILE, out / MANIFEST_FILE]
    config_file = out / GENERATION_CONFIG_FILE
    problem = None
    if config_file.is_file():
        try:
            old = json.loads(config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = {}
        diff = [k for k in IDENTITY_KEYS if old.get(k) != config.get(k)]
        if diff:
            problem = "images generated with other parameters (" + ", ".join(
                f"{k}: {old.get(k)!r} != {config.get(k)!r}" for k in diff[:4]
            ) + (", ..." if len(diff) > 4 else "") + ")"
    elif any(out.iterdir()):
        problem = f"files not written by `cxr-diffusion generate` (no {GENERATION_CONFIG_FILE})"
    if problem and not overwrite:
        raise UserError(f"output folder {out} holds {problem}; choose another --out or pass --overwrite to replace them")
    if problem:
        logger.warning("--overwrite: clearing %s", out)
        for path in ours:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        if any(out.iterdir()):
            raise UserError(f"output folder {out} holds other files; empty it or choose another --out")
    (out / SYNTHETIC_IMAGES_DIR).mkdir(exist_ok=True)
    stale = remove_stale_temporaries(out / SYNTHETIC_IMAGES_DIR)
    if stale:
        logger.info("removed %d half-written image(s) left by an interrupted run", stale)
    write_json_atomic(config_file, config)


def _run_pipe(pipe: Any, prompts: list[str], seeds: list[int], cfg: dict[str, Any], batch_invariant: bool) -> list[Any]:
    """Images for ``prompts`` with one generator per image (``seeds``), grayscale PIL."""
    import torch

    def call(p: list[str], s: list[int]) -> list[Any]:
        out = pipe(
            prompt=p,
            negative_prompt=[cfg["negative_prompt"]] * len(p) if cfg["negative_prompt"] else None,
            num_inference_steps=cfg["steps"],
            guidance_scale=cfg["guidance"],
            generator=[torch.Generator("cpu").manual_seed(x) for x in s],
            height=cfg["height"],
            width=cfg["width"],
            output_type="pil",
        )
        return out.images

    if batch_invariant:
        images = [img for p, s in zip(prompts, seeds) for img in call([p], [s])]
    else:
        images = call(prompts, seeds)
    return [img.convert("L") for img in images]


def generate(
    pretrained_model: str | Path,
    plan: PromptPlan,
    out: str | Path,
    *,
    adapter: str | Path | None = None,
    scheduler: str = "dpm",
    steps: int = 50,
    guidance: float = 4.0,
    negative_prompt: str | None = None,
    batch_size: int = 8,
    seed: int = 0,
    resolution: int | None = None,
    dtype: str = "fp32",
    overwrite: bool = False,
    batch_invariant: bool | None = None,
) -> Path:
    """Generate ``plan`` into the synthetic dataset folder ``out`` (resuming if it is partial).

    Run under ``accelerate launch`` to shard the images across processes. ``batch_invariant``
    (default: on CPU only) denoises one image per pipeline call so that images are bit-identical
    whatever ``batch_size``; ``dtype`` applies on CUDA only. Returns ``out``.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env
    from tqdm.auto import tqdm

    from hf_cxr_diffusion import __version__

    if steps <= 0 or batch_size <= 0:
        raise UserError(f"--steps ({steps}) and --batch-size ({batch_size}) must be positive")
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    out = Path(out)
    adapter_info = read_training_output(adapter, require_method_file=False) if adapter is not None else None
    torch_dtype = resolve_dtype(dtype, state.device)
    pipe = build_pipeline(pretrained_model, adapter_info, scheduler, torch_dtype, state.device)
    side = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    base = str(adapter_info.base_model or pretrained_model) if adapter_info and not adapter_info.is_adapter else str(pretrained_model)
    config: dict[str, Any] = {
        "base_model": base,
        "adapter": str(adapter_info.path) if adapter_info else "",
        "adapter_sha256": adapter_info.sha256 if adapter_info else "",
        "adapter_method": (adapter_info.method or "") if adapter_info else "",
        "scheduler": scheduler,
        "steps": int(steps),
        "guidance": float(guidance),
        "negative_prompt": negative_prompt or "",
        "seed": int(seed),
        "height": int(side),
        "width": int(side),
        "dtype": {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[torch_dtype],
        "prompts_sha256": _prompts_digest(plan),
        "label_names": list(plan.label_names),
        "num_images": len(plan.items),
        "generator": f"hf_cxr_diffusion {__version__}",
    }
    if state.is_main_process:
        ensure_output_dir(out)
        _prepare_folder(out, config, overwrite)
    state.wait_for_everyone()
    if batch_invariant is None:
        batch_invariant = state.device.type == "cpu"
    records = [_record(i, plan, config) for i in range(len(plan.items))]
    # split all indices (not only the missing ones) so image i always falls to the same process
    (out / SYNTHETIC_IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    with state.split_between_processes(list(range(len(records)))) as share:
        mine = [i for i in share if not image_path(out, i).is_file()]
        logger.info("process %d/%d: images %s, %d to draw", state.process_index, state.num_processes,
                    f"{share[0]}-{share[-1]}" if share else "none", len(mine))  # fmt: skip
        if len(mine) < len(share):
            logger.info("resuming: %d of this process's %d images already in %s", len(share) - len(mine), len(share), out)
        bar = tqdm(total=len(mine), desc=f"generate [{state.process_index}]", disable=not state.is_local_main_process)
        for start in range(0, len(mine), batch_size):
            batch = [records[i] for i in mine[start : start + batch_size]]
            images = _run_pipe(pipe, [r["prompt"] for r in batch], [r["seed"] for r in batch], config, batch_invariant)
            for rec, img in zip(batch, images):
                save_png(img, image_path(out, rec["index"]), rec)
            bar.update(len(batch))
        bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        finalize(out, records, config)
    state.wait_for_everyone()
    return out


def _record(index: int, plan: PromptPlan, config: dict[str, Any]) -> dict[str, Any]:
    item = plan.items[index]
    return {
        "index": index,
        "file_name": f"{SYNTHETIC_IMAGES_DIR}/{index:06d}.png",
        "prompt": item.prompt,
        "labels": list(item.labels),
        "seed": config["seed"] + index,
        "synthetic": True,
        **{k: config[k] for k in ("scheduler", "steps", "guidance", "negative_prompt", "base_model", "adapter", "adapter_sha256")},
    }


def finalize(out: Path, records: Sequence[dict[str, Any]], config: dict[str, Any]) -> None:
    """Check every image is there with the expected provenance, then write parquet + card + manifest."""
    missing = [r["index"] for r in records if not image_path(out, r["index"]).is_file()]
    if missing:
        raise UserError(f"{len(missing)} images missing from {out / SYNTHETIC_IMAGES_DIR} (first: {missing[:5]}); rerun to resume")
    entries = []
    for rec in records:
        found = read_png_provenance(image_path(out, rec["index"]))
        if found != rec:
            raise UserError(f"{image_path(out, rec['index'])} was generated with other parameters; rerun with --overwrite")
        entries.append({"index": rec["index"], "pixel_sha256": sha256_pixels(image_path(out, rec["index"])),
                        **{k: rec[k] for k in ("seed", "prompt", "adapter_sha256")}})
    write_dataset(out, records, config)
    write_manifest(out, config, entries)
    logger.info("%d synthetic images in %s", len(records), out)
