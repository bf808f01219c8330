"""CLIP score: prompt-image agreement of generated images with a user-chosen CLIP model.

CLIPScore (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image
Captioning") is ``w * max(cos(E_image, E_text), 0)`` per image-prompt pair; we use ``w = 100``,
the scale of torchmetrics' ``CLIPScore`` and of the SeLoRA paper's tables (scores near 27);
Hessel et al. use ``w = 2.5``. Any ``transformers`` ``CLIPModel`` folder or cached hub id works
(e.g. a biomedical CLIP in the transformers format); open_clip-only checkpoints do not.

Weights are never downloaded: the model must be a local folder or already in the Hub cache, else
:class:`~hf_cxr_diffusion.errors.MissingWeightsError` says where to put it. A checkpoint missing
some weights is refused rather than silently completed with random ones.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from hf_cxr_diffusion.errors import MissingWeightsError, UserError
from hf_cxr_diffusion.metrics.base import Reported
from hf_cxr_diffusion.metrics.decode import to_grayscale
from hf_cxr_diffusion.metrics.extractor import default_device

logger = logging.getLogger(__name__)

PROTOCOL_ID = "clip-score-v1"
PROTOCOL_NOTE = (
    "CLIPScore (Hessel et al. 2021) with w=100: 100 * max(cos(image embedding, text embedding), 0) per "
    "image-prompt pair. Images: grayscale scaled by bit depth to 8 bit, replicated to RGB, then the CLIP "
    "model's own image processor (resize, centre crop, normalise). Prompts: the model's tokenizer, truncated "
    "at its maximum length (counted in n_prompts_truncated)."
)
#: weights a checkpoint may lack without the model being partly random (recomputed buffers)
_HARMLESS_MISSING = ("position_ids",)


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache folder (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _missing(model_id: str, err: Exception) -> MissingWeightsError:
    return MissingWeightsError(
        f"CLIP model {model_id!r} is neither a local folder nor in the Hugging Face Hub cache ({hub_cache_dir()}); "
        f"weights are never downloaded here ({type(err).__name__}). Fetch it where the network is open with "
        f"`hf download {model_id}` (same HF_HOME/HF_HUB_CACHE) or save it with CLIPModel/CLIPProcessor "
        "save_pretrained and pass --clip-model /path/to/folder"
    )


def _embedding(output: Any) -> torch.Tensor:
    """``get_*_features`` returns the projected embedding (older transformers) or an output with ``pooler_output``."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _rgb8(image: Any) -> np.ndarray:
    gray, maxval = to_grayscale(image)
    return np.repeat(np.rint(np.asarray(gray, np.float64) * (255.0 / maxval)).astype(np.uint8)[..., None], 3, axis=-1)


class CLIPScorer:
    """A ``CLIPModel`` with its tokenizer and image processor, loaded from disk only."""

    def __init__(
        self,
        clip_model: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 32,
    ) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        path = Path(clip_model).expanduser()
        if path.exists() and not (path / "config.json").is_file():
            raise UserError(f"CLIP model folder {path} has no config.json; pass a folder written by save_pretrained")
        if not path.exists() and str(clip_model).startswith((".", "/", "~")):
            raise UserError(f"CLIP model folder {clip_model} does not exist")
        self.model_id = str(path) if path.exists() else str(clip_model)
        self.device = torch.device(device) if device is not None else default_device()
        dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        try:
            model, info = CLIPModel.from_pretrained(
                self.model_id, local_files_only=True, dtype=dtype, output_loading_info=True
            )
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_id, local_files_only=True)
            self.image_processor = AutoImageProcessor.from_pretrained(self.model_id, local_files_only=True)
        except OSError as err:
            raise _missing(self.model_id, err) from err
        missing = [k for k in info.get("missing_keys", ()) if not k.endswith(_HARMLESS_MISSING)]
        if missing:
            raise MissingWeightsError(
                f"CLIP model {self.model_id!r} lacks {len(missing)} weights (e.g. {missing[:3]}); they would be "
                "random. Use a complete CLIPModel checkpoint"
            )
        self.model = model.to(self.device).eval()
        self.batch_size = int(batch_size)
        text_limit = getattr(self.model.config.text_config, "max_position_embeddings", None)
        self.max_length = min(v for v in (self.tokenizer.model_max_length, text_limit) if v)

    def _batches(self, images: Iterable[Any], prompts: Sequence[str]) -> Iterator[tuple[list[Any], list[str]]]:
        start, batch = 0, []
        for image in images:
            batch.append(image)
            if len(batch) == self.batch_size:
                yield batch, self._prompts(prompts, start, len(batch))
                start, batch = start + len(batch), []
        if batch:
            yield batch, self._prompts(prompts, start, len(batch))

    @staticmethod
    def _prompts(prompts: Sequence[str], start: int, count: int) -> list[str]:
        if start + count > len(prompts):
            raise UserError(f"more images than prompts ({len(prompts)}); pass one prompt per image")
        return [prompts[i] for i in range(start, start + count)]

    @torch.inference_mode()
    def score_batch(self, images: Sequence[Any], prompts: Sequence[str]) -> tuple[np.ndarray, int]:
        """Per-pair CLIP scores of one batch and how many prompts were truncated."""
        if any(not isinstance(p, str) for p in prompts):
            raise UserError("prompts must be strings (one per image)")
        pixels = self.image_processor(images=[_rgb8(im) for im in images], return_tensors="pt")["pixel_values"]
        full = self.tokenizer(list(prompts), verbose=False)["input_ids"]
        text = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        image_emb = _embedding(self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype)))
        text_emb = _embedding(self.model.get_text_features(**{k: v.to(self.device) for k, v in text.items()}))
        cos = torch.nn.functional.cosine_similarity(image_emb.double(), text_emb.double(), dim=-1)
        return (100.0 * cos.clamp_min(0)).cpu().numpy(), sum(len(ids) > self.max_length for ids in full)

    def __call__(self, images: Iterable[Any], prompts: Sequence[str]) -> dict[str, Any]:
        """CLIP score of each image against its prompt (``images[i]`` with ``prompts[i]``)."""
        scores, truncated = [], 0
        with tqdm(total=len(prompts), desc="CLIP score", unit="img", disable=None) as bar:
            for batch, batch_prompts in self._batches(images, prompts):
                batch_scores, batch_truncated = self.score_batch(batch, batch_prompts)
                scores.append(batch_scores)
                truncated += batch_truncated
                bar.update(len(batch))
        per_image = np.concatenate(scores) if scores else np.zeros(0)
        if len(per_image) != len(prompts):
            raise UserError(f"{len(per_image)} images but {len(prompts)} prompts; pass one prompt per image")
        if truncated:
            logger.warning("%d of %d prompts longer than %d tokens were truncated", truncated, len(prompts), self.max_length)
        return {
            "score": float(per_image.mean()) if len(per_image) else None,
            "std": float(per_image.std(ddof=1)) if len(per_image) > 1 else None,
            "n": len(per_image),
            "per_image": per_image.tolist(),
            "n_prompts_truncated": truncated,
            "clip_model": self.model_id,
            "protocol": PROTOCOL_ID,
            "protocol_note": PROTOCOL_NOTE,
        }


def clip_score(
    images: Iterable[Any],
    prompts: Sequence[str],
    clip_model: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Mean, std (``ddof=1``), n and per-image CLIP scores of ``images`` against ``prompts``."""
    return CLIPScorer(clip_model, device=device, batch_size=batch_size)(images, prompts)


class CLIPScore(Reported):
    """CLIP score as a metric of its own pass over the synthetic images, run first (a missing model fails fast)."""

    name = key = "clip_score"
    higher_is_better: ClassVar[bool] = True
    weights_key: ClassVar[str] = "clip_model"

    def __init__(self, *, clip_model: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 batch_size: int = 32) -> None:
        self.clip_model, self.device, self.batch_size = clip_model, device, batch_size

    @classmethod
    def from_options(cls, options: Any) -> CLIPScore:
        return cls(clip_model=options.clip_model, device=options.device, batch_size=options.batch_size)

    def check(self, real: Any, synthetic: Any, *, prompts_synthetic: Sequence[str] | None = None,
              second_pass: bool = False, **_: Any) -> None:
        if self.clip_model is None:
            raise UserError("clip_score needs clip_model: a transformers CLIP model folder or a cached hub id (--clip-model)")
        if prompts_synthetic is None:
            raise UserError("clip_score needs prompts_synthetic: the prompt each synthetic image was generated from")
        if hasattr(synthetic, "__len__") and len(prompts_synthetic) != len(synthetic):
            raise UserError(f"{len(prompts_synthetic)} prompts for {len(synthetic)} synthetic images; pass one prompt per image")
        if second_pass and not isinstance(synthetic, Sequence):
            raise UserError("clip_score with other metrics reads the synthetic images twice: pass them as a sequence")

    def run(self, real: Any, synthetic: Any, *, prompts_synthetic: Sequence[str], **_: Any) -> dict[str, Any]:
        return clip_score(synthetic, prompts_synthetic, self.clip_model, device=self.device, batch_size=self.batch_size)
