"""Optional Inception-FID at the feature dims 64 / 192 / 768 / 2048 (the SeLoRA paper's table).

The FID Inception-v3 of pytorch-fid (Seitzer, after Heusel et al. 2017) with its TF-ported weights
``pt_inception-2015-12-05-6726825d.pth``, read from torch's hub cache (``$TORCH_HOME/hub/checkpoints``)
only: when the file is missing we raise :class:`MissingWeightsError` instead of letting pytorch-fid
download it. There is no random-weights mode (a random Inception FID means nothing and is not
needed to test the pipeline: use ``xrv_fid`` with ``allow_random_weights``).

Protocol ``inception-fid-v1``: grayscale with bit-depth scaling to [0, 1] (as ``xrv-fid-v1`` step
1), replicated to 3 channels, bilinear resize to 299 x 299 (``align_corners=False``, no antialias:
pytorch-fid's own ``resize_input``); for 8-bit images this is exactly pytorch-fid's pipeline.
Features of blocks below 2048 are globally average pooled, as pytorch-fid does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from hf_cxr_diffusion.errors import MissingWeightsError, UserError
from hf_cxr_diffusion.metrics.base import Reported
from hf_cxr_diffusion.metrics.decode import to_grayscale
from hf_cxr_diffusion.metrics.extractor import _prefetch, default_device
from hf_cxr_diffusion.metrics.fid import fid_from_stats
from hf_cxr_diffusion.metrics.stats import FeatureStats

PROTOCOL_ID = "inception-fid-v1"
DIMS = (64, 192, 768, 2048)


def inception_weights_file() -> Path:
    """Where pytorch-fid's FID Inception weights must be: ``<torch hub dir>/checkpoints/<file>``."""
    from pytorch_fid.inception import FID_WEIGHTS_URL

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(FID_WEIGHTS_URL)


def require_inception_weights() -> Path:
    """The weights file, or :class:`MissingWeightsError` naming the file and the folder to put it in."""
    from pytorch_fid.inception import FID_WEIGHTS_URL

    path = inception_weights_file()
    if not path.is_file():
        raise MissingWeightsError(
            f"Inception-FID weights are not on disk and the network is off: place the file {path.name} in the "
            f"folder {path.parent} (download it elsewhere from {FID_WEIGHTS_URL}; TORCH_HOME moves the folder)"
        )
    return path


def _load_inception(dims: Sequence[int]) -> torch.nn.Module:
    from pytorch_fid.inception import InceptionV3

    require_inception_weights()
    blocks = [InceptionV3.BLOCK_INDEX_BY_DIM[d] for d in dims]
    return InceptionV3(blocks, resize_input=False, normalize_input=True).eval()  # file cached: no download


def inception_input(image: Any) -> torch.Tensor:
    """Protocol ``inception-fid-v1`` for one image: ``3 x 299 x 299`` in [0, 1]."""
    gray, maxval = to_grayscale(image)
    x = torch.from_numpy((gray / maxval).astype("float32"))[None, None]
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return x[0].expand(3, -1, -1)


def _stream_stats(model: torch.nn.Module, images: Iterable[Any], dims: Sequence[int], device: torch.device, batch_size: int) -> dict[int, FeatureStats]:
    stats = {d: FeatureStats(d) for d in dims}

    def batches():
        batch = []
        for image in images:
            batch.append(inception_input(image))
            if len(batch) == batch_size:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)

    with torch.inference_mode():
        for batch in _prefetch(batches()):
            for d, out in zip(sorted(dims), model(batch.to(device))):
                stats[d].update(F.adaptive_avg_pool2d(out, 1).flatten(1))
    return stats


def inception_fid(
    real: Iterable[Any],
    synthetic: Iterable[Any],
    dims: Sequence[int] = DIMS,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Inception-FID of ``synthetic`` vs ``real`` at every requested feature dim, in one pass each."""
    dims = sorted(set(int(d) for d in dims))
    if not dims or any(d not in DIMS for d in dims):
        raise UserError(f"Inception-FID dims {dims}: choose from {DIMS}")
    device = torch.device(device) if device is not None else default_device()
    model = _load_inception(dims).to(device)
    real_stats = _stream_stats(model, real, dims, device, batch_size)
    syn_stats = _stream_stats(model, synthetic, dims, device, batch_size)
    n_real, n_syn = real_stats[dims[0]].n, syn_stats[dims[0]].n
    return {
        "scores": {str(d): fid_from_stats(real_stats[d], syn_stats[d]) if min(n_real, n_syn) >= 2 else None for d in dims},
        "n_real": n_real,
        "n_synthetic": n_syn,
        "protocol": PROTOCOL_ID,
        "weights": inception_weights_file().name,
    }


class InceptionFID(Reported):
    """Inception-FID as a metric of its own pass over the images (see :func:`inception_fid`)."""

    name = key = "inception_fid"
    higher_is_better: ClassVar[bool] = False

    @classmethod
    def headline(cls, entry: dict[str, Any]) -> float | None:
        """The FID at the largest feature dim computed (2048 by default, pytorch-fid's)."""
        scores = entry.get("scores") or {}
        value = scores[max(scores, key=int)] if scores else None
        return None if value is None else float(value)

    def __init__(self, *, inception_dims: Sequence[int] = (2048,), device: str | torch.device | None = None,
                 batch_size: int = 32) -> None:
        self.dims, self.device, self.batch_size = tuple(inception_dims), device, batch_size

    @classmethod
    def from_options(cls, options: Any) -> InceptionFID:
        return cls(inception_dims=options.inception_dims, device=options.device, batch_size=options.batch_size)

    def check(self, real: Any, synthetic: Any, **_: Any) -> None:
        """Fail before the long feature pass: images must be re-readable and the weights on disk."""
        if not all(isinstance(s, Sequence) for s in (real, synthetic)):
            raise UserError("inception_fid reads the images a second time: pass real and synthetic as sequences")
        require_inception_weights()

    def run(self, real: Any, synthetic: Any, **_: Any) -> dict[str, Any]:
        return inception_fid(real, synthetic, self.dims, device=self.device, batch_size=self.batch_size)
