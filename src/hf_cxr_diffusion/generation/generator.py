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

import errno
import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.artefacts import (
    CARD_FILE,
    GENERATION_CONFIG_FILE,
    MANIFEST_FILE,
    SYNTHETIC_DATA_DIR,
    SYNTHETIC_IMAGES_DIR,
    read_training_output,
    synthetic_image_name,
    write_manifest,
)
from hf_cxr_diffusion import runs
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.generation.prompts import PromptPlan
from hf_cxr_diffusion.generation.writer import (
    image_path,
    is_intact_png,
    read_png_provenance,
    save_png,
    write_dataset,
)
from hf_cxr_diffusion.hashing import sha256_json, sha256_pixels
from hf_cxr_diffusion.io import check_replaceable, ensure_output_dir, temporaries_of, write_json_atomic
from hf_cxr_diffusion.models.pipeline import build_pipeline
from hf_cxr_diffusion.training.distributed import broadcast_value

logger = logging.getLogger(__name__)

DTYPES: tuple[str, ...] = ("fp32", "fp16", "bf16", "auto")


def resolve_dtype(dtype: str, device: Any) -> Any:
    """``--dtype`` as a torch dtype. Half precision only on CUDA: on any other device every choice is fp32.

    ``auto`` is bf16 on a CUDA device that supports it, else fp16; ``bf16`` on a CUDA device without bf16 is refused.
    """
    import torch

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if getattr(device, "type", str(device)) != "cuda":
        if dtype not in ("fp32", "auto"):
            logger.warning("--dtype %s ignored on %s: generating in fp32", dtype, device)
        return torch.float32
    bf16 = torch.cuda.is_bf16_supported()
    if dtype == "auto":
        return torch.bfloat16 if bf16 else torch.float16
    if dtype == "bf16" and not bf16:
        raise UserError("--dtype bf16: this CUDA device has no bfloat16 support; use fp16 or auto")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def prepare_for_device(pipe: Any, device: Any, torch_compile: bool = False) -> None:
    """On CUDA: channels-last U-Net and VAE (:func:`~hf_cxr_diffusion.models.loading.to_channels_last`). With
    ``torch_compile``: the U-Net (where the denoising loop spends its time) compiled in place with
    ``torch.compile`` (``nn.Module.compile``: the module, its config and adapters stay as they are)."""
    from hf_cxr_diffusion.models.loading import to_channels_last

    to_channels_last(device, pipe.unet, pipe.vae)
    if torch_compile:
        pipe.unet.compile()


def _prompts_digest(plan: PromptPlan) -> str:
    return sha256_json([[it.prompt, list(it.labels)] for it in plan.items])


#: top-level entries of a synthetic dataset folder the generator writes (the only ones ``--overwrite`` deletes)
OWNED_ENTRIES: tuple[str, ...] = (SYNTHETIC_IMAGES_DIR, SYNTHETIC_DATA_DIR, GENERATION_CONFIG_FILE, CARD_FILE, MANIFEST_FILE)


def _is_image_name(name: str) -> bool:
    return name.endswith(".png")


def _claim_folder(out: Path, identity: runs.RunIdentity, config: dict[str, Any], overwrite: bool,
                  may_change: Collection[str]) -> None:
    """Main process, with the folder's lock held: make ``out`` the folder of this run (``identity``, generating
    with ``config``), resuming it if it already is.

    A folder holding anything but a generation's artefacts is refused before anything is deleted (unless it is
    recorded as this run's); a folder of a different run is refused naming the differing keys, unless
    ``overwrite``, which removes only :data:`OWNED_ENTRIES`. Leftovers of killed writes are removed.
    """
    if overwrite or runs.read_record(out) is None:
        allowed = (*OWNED_ENTRIES, *runs.RECORD_ENTRIES, *temporaries_of(out, OWNED_ENTRIES))
        check_replaceable(out, allowed, what="a generation's artefacts", flag="--output-dir")
    runs.claim_output_dir(out, identity, owned=OWNED_ENTRIES.__contains__, overwrite=overwrite, resuming=None,
                          may_change=may_change)
    runs.remove_stale_temporaries(out, OWNED_ENTRIES.__contains__)
    (out / SYNTHETIC_IMAGES_DIR).mkdir(exist_ok=True)
    runs.remove_stale_temporaries(out / SYNTHETIC_IMAGES_DIR, _is_image_name)  # half-written PNGs of killed writers
    write_json_atomic(out / GENERATION_CONFIG_FILE, config)


def _to_draw(out: Path, share: Sequence[int]) -> list[int]:
    """Indices of ``share`` without an intact image on disk; an unreadable one (truncated, no provenance) is
    deleted, counted and logged, and drawn again."""
    broken = [i for i in share if image_path(out, i).is_file() and not is_intact_png(image_path(out, i))]
    if broken:
        logger.warning("regenerating %d unreadable image(s) in %s (truncated or without provenance): %s",
                       len(broken), out / SYNTHETIC_IMAGES_DIR, ", ".join(image_path(out, i).name for i in broken[:5]))
        for i in broken:
            image_path(out, i).unlink()
    return [i for i in share if not image_path(out, i).is_file()]


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
    torch_compile: bool = False,
) -> Path:
    """Generate ``plan`` into the synthetic dataset folder ``out`` (resuming if it is partial).

    Run under ``accelerate launch`` to shard the images across processes. ``batch_invariant``
    (default: on CPU only) denoises one image per pipeline call so that images are bit-identical
    whatever ``batch_size``; ``batch_invariant=False`` batches ``batch_size`` images per call (the CUDA
    default). ``dtype`` applies on CUDA only (:func:`resolve_dtype`); ``torch_compile`` compiles the U-Net
    (:func:`prepare_for_device`). Returns ``out``.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from hf_cxr_diffusion import __version__

    if steps <= 0 or batch_size <= 0:
        raise UserError(f"--steps ({steps}) and --batch-size ({batch_size}) must be positive")
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    out = Path(out)
    adapter_info = read_training_output(adapter, require_method_file=False) if adapter is not None else None
    weights_dtype = resolve_dtype(dtype, state.device)
    pipe = build_pipeline(pretrained_model, adapter_info, scheduler, weights_dtype, state.device)
    prepare_for_device(pipe, state.device, torch_compile)
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
        "dtype": {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[weights_dtype],
        "prompts_sha256": _prompts_digest(plan),
        "label_names": list(plan.label_names),
        "num_images": len(plan.items),
        "generator": f"hf_cxr_diffusion {__version__}",
    }
    if batch_invariant is None:
        batch_invariant = state.device.type == "cpu"
    compiled = {"torch_compile": True} if torch_compile else {}  # absent when off: earlier folders keep their identity
    identity = runs.RunIdentity("generate", {**config, "batch_size": int(batch_size), "batch_invariant": bool(batch_invariant),
                                             **compiled},
                                dataset_fingerprint=config["prompts_sha256"],
                                base_model_fingerprint=runs.input_fingerprint(pretrained_model))
    may_change = runs.GENERATE_RESUMABLE if batch_invariant else runs.GENERATE_RESUMABLE - {"batch_size"}
    # the main process alone locks and claims the folder, and always unlocks it (an in-process caller such as the
    # study runner goes on living); a refusal is raised on every process
    lock = runs.OutputLock(out, "generate") if state.is_main_process else None
    try:
        error = None
        if lock is not None:
            try:
                ensure_output_dir(out)
                lock.acquire()
                _claim_folder(out, identity, config, overwrite, may_change)
            except UserError as err:
                error = str(err)
        error = broadcast_value(error, state.num_processes)
        if error is not None:
            raise UserError(error)
        _draw_and_finalize(out, plan, config, pipe, state, batch_size, batch_invariant)
    finally:
        if lock is not None:
            lock.release()
    return out


def _draw_and_finalize(out: Path, plan: PromptPlan, config: dict[str, Any], pipe: Any, state: Any, batch_size: int,
                       batch_invariant: bool) -> None:
    """Every process draws its share of the images still missing; then the main process writes the dataset."""
    from tqdm.auto import tqdm

    records = [_record(i, plan, config) for i in range(len(plan.items))]
    # split all indices (not only the missing ones) so image i always falls to the same process
    (out / SYNTHETIC_IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    with state.split_between_processes(list(range(len(records)))) as share:
        mine = _to_draw(out, share)
        logger.info("process %d/%d: images %s, %d to draw", state.process_index, state.num_processes,
                    f"{share[0]}-{share[-1]}" if share else "none", len(mine))  # fmt: skip
        if len(mine) < len(share):
            logger.info("resuming: %d of this process's %d images already in %s", len(share) - len(mine), len(share), out)
        bar = tqdm(total=len(mine), desc=f"generate [{state.process_index}]", disable=not state.is_local_main_process)
        for start in range(0, len(mine), batch_size):
            batch = [records[i] for i in mine[start : start + batch_size]]
            images = _run_pipe(pipe, [r["prompt"] for r in batch], [r["seed"] for r in batch], config, batch_invariant)
            for rec, img in zip(batch, images):
                try:
                    save_png(img, image_path(out, rec["index"]), rec)
                except OSError as err:
                    raise _write_error(err, image_path(out, rec["index"]), out) from err
            bar.update(len(batch))
        bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        try:
            finalize(out, records, config)
        except OSError as err:
            raise _write_error(err, Path(err.filename or out / SYNTHETIC_DATA_DIR), out) from err
    state.wait_for_everyone()


def _write_error(err: OSError, target: Path, out: Path) -> UserError:
    """The one-line error for a failed write (``disk full`` on ENOSPC); every image already written is complete."""
    done = sum(1 for _ in (out / SYNTHETIC_IMAGES_DIR).glob("*.png"))
    cause = "disk full" if err.errno == errno.ENOSPC else f"{err.strerror or err}"
    return UserError(f"{cause} while writing {target}; the {done} image(s) already in {out / SYNTHETIC_IMAGES_DIR} are "
                     "intact: free space and run the same command again to resume")


def _record(index: int, plan: PromptPlan, config: dict[str, Any]) -> dict[str, Any]:
    item = plan.items[index]
    return {
        "index": index,
        "file_name": synthetic_image_name(index),
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
