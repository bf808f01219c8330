"""Load a base Stable Diffusion pipeline from a local folder or a hub id through one code path.

``runwayml/stable-diffusion-v1-5`` (from the Hub cache or a local copy) and the tiny pipeline of
:mod:`hf_cxr_diffusion.models.tiny` are loaded by exactly the same calls. When the weights are
not on disk and the Hub cannot be reached, the error says where to put them.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from hf_cxr_diffusion.errors import MissingWeightsError, UserError

logger = logging.getLogger(__name__)


def _missing(name: str, err: Exception) -> MissingWeightsError:
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )
    return MissingWeightsError(
        f"pretrained model {name!r} is neither a local diffusers folder nor in the Hub cache ({cache}) "
        f"and cannot be downloaded ({type(err).__name__}). Download it where the network is open "
        f"(`hf download {name}`) into that cache, or pass --pretrained-model /path/to/folder "
        "holding model_index.json; `cxr-diffusion make-tiny-model DIR` builds a tiny offline one for testing."
    )


#: names of pipelines shipped inside the package -> function returning their folder
SHIPPED_PIPELINES = {"phantom-base": "hf_cxr_diffusion.phantoms.base:phantom_base_path"}


def shipped_pipeline(name: str) -> Path:
    """The folder of a pipeline shipped with the package (``phantom-base``)."""
    import importlib

    module, _, attr = SHIPPED_PIPELINES[name].partition(":")
    return getattr(importlib.import_module(module), attr)()


def resolve_pretrained(name_or_path: str | os.PathLike) -> str:
    """A local folder path or shipped pipeline name as a folder path string, or the hub id unchanged; reject a broken folder."""
    if str(name_or_path) in SHIPPED_PIPELINES and not Path(name_or_path).exists():
        return str(shipped_pipeline(str(name_or_path)))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise UserError(f"{path} is not a diffusers pipeline folder: model_index.json is missing")
        return str(path)
    text = str(name_or_path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise UserError(f"pretrained model folder {text} does not exist")
    return text


@functools.lru_cache(maxsize=None)
def hub_offline(timeout: float = 3.0) -> bool:
    """True when ``HF_HUB_OFFLINE`` is set or the Hub endpoint does not answer a TCP connect within ``timeout`` s.

    Checked once per process: every loader below then reads the Hub cache only (``local_files_only``), so an
    unreachable Hub costs seconds, not minutes of download retries.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    url = urllib.parse.urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout):
            return False
    except OSError as err:
        logger.warning("the Hub (%s) is unreachable (%s): reading models from the local Hub cache only", constants.ENDPOINT, err)
        return True


def local_files_only(source: str, revision: str | None = None) -> bool:
    """Whether to load ``source`` from disk only; a hub id that is neither cached nor downloadable fails here, at once."""
    if Path(source).exists() or not hub_offline():
        return False
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(source, "model_index.json", revision=revision), str):
        raise _missing(source, ConnectionError("the Hub is offline or unreachable"))
    return True


def load_pipeline(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    **kwargs,
) -> DiffusionPipeline:
    """``DiffusionPipeline.from_pretrained`` for a folder or hub id, with a clear missing-weights error."""
    source = resolve_pretrained(name_or_path)
    kwargs.setdefault("local_files_only", local_files_only(source, kwargs.get("revision")))
    try:
        pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype, **kwargs)
    except OSError as err:
        raise _missing(source, err) from err
    if getattr(pipe, "safety_checker", None) is not None:
        logger.info("safety checker of %s kept; pass safety_checker=None to drop it", source)
    if device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass
class SDComponents:
    """The parts of a Stable Diffusion pipeline that training touches, loaded separately."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    source: str

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def to_channels_last(device: torch.device | str, *modules: torch.nn.Module) -> bool:
    """On CUDA, the modules' 4-D tensors in channels-last memory format (the layout cuDNN's fast convolutions and
    tensor cores use; same maths); elsewhere nothing changes (on CPU it is no faster). Every save path writes
    ``.contiguous()`` tensors, so artefacts keep the standard layout. Returns whether it converted."""
    if torch.device(device).type != "cuda":
        return False
    for module in modules:
        module.to(memory_format=torch.channels_last)
    return True


def load_components(name_or_path: str | os.PathLike, *, revision: str | None = None, variant: str | None = None) -> SDComponents:
    """Load tokenizer, text encoder, VAE, U-Net and a DDPM noise scheduler (fp32) from subfolders.

    ``revision``: hub branch/tag/commit; ``variant``: weights file variant (``fp16`` reads ``*.fp16.safetensors``).
    """
    source = resolve_pretrained(name_or_path)
    common = {"revision": revision, "local_files_only": local_files_only(source, revision)}
    weights = {**common, "variant": variant}
    try:
        return SDComponents(
            tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common),
            text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **weights),
            vae=AutoencoderKL.from_pretrained(source, subfolder="vae", **weights),
            unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", **weights),
            noise_scheduler=DDPMScheduler.from_pretrained(source, subfolder="scheduler", **common),
            source=source,
        )
    except OSError as err:
        raise _missing(source, err) from err
