"""TorchXRayVision DenseNet-121 features under the versioned ``xrv-fid-v1`` preprocessing protocol.

Features are the 1024-d pooled activations of the DenseNet-121 of Cohen et al., "TorchXRayVision:
A library of chest X-ray datasets and models" (MIDL 2022), with ``features2`` semantics
(ReLU + global average pool over the last dense block). Every score built on them carries the
protocol id so numbers computed with a different preprocessing are never compared by mistake.

Protocol ``xrv-fid-v1`` (one image at a time, any size):

1. decode to a 2-D grayscale array; RGB(A) -> mean of the three colour channels, alpha dropped;
2. centre crop to a square of side ``min(h, w)`` (torchxrayvision's ``XRayCenterCrop`` offsets);
3. scale by the image's bit depth: ``(x / maxval * 2 - 1) * 1024`` with ``maxval`` 255 for 8-bit,
   65535 for 16-bit, 1 for boolean or float images in [0, 1] (computed in float64, so an 8-bit
   image and the same image stored as 16-bit (``v * 257``) give bit-identical inputs);
4. resize to 224 x 224 with ``bilinear-antialias``: Pillow's ``Image.BILINEAR`` on the float32
   (mode ``"F"``) image, a triangle filter widened by the scale factor when shrinking (what
   ``torch.nn.functional.interpolate(mode="bilinear", antialias=True)`` reproduces to ~1e-5, but
   20x faster and single-threaded, so it overlaps the forward pass); a 224 x 224 crop is used as is.

Weights never come from the network: they are read from torchxrayvision's cache
(``~/.torchxrayvision/models_data/<file>``) or an explicit path, else :class:`MissingWeightsError`.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hf_cxr_diffusion.errors import MissingWeightsError, UserError

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "densenet121-res224-all"
FEATURE_DIM = 1024
#: seed of the random DenseNet used when ``allow_random_weights=True`` and no file is on disk
RANDOM_WEIGHTS_SEED = 0


@dataclass(frozen=True)
class Protocol:
    """A named, versioned preprocessing protocol; its ``id`` travels with every score."""

    id: str = "xrv-fid-v1"
    size: int = 224
    value_range: float = 1024.0
    grayscale: str = "mean of RGB channels"
    crop: str = "centre square, side min(h, w)"
    resize_filter: str = "bilinear-antialias (Pillow BILINEAR on float32)"

    def describe(self) -> dict[str, Any]:
        return asdict(self)


PROTOCOL = Protocol()

ImageLike = Any  # PIL.Image | np.ndarray | torch.Tensor | str | os.PathLike | {"bytes"/"path"} dict


# --------------------------------------------------------------------------- decoding
def _open(image: ImageLike) -> Image.Image | np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise UserError(f"image file {path} does not exist; check the path")
        return Image.open(path)
    if isinstance(image, dict):  # datasets' undecoded Image value
        if image.get("bytes") is not None:
            return Image.open(io.BytesIO(image["bytes"]))
        if image.get("path"):
            return _open(image["path"])
        raise UserError(f"image dict without bytes or path: keys {sorted(image)}")
    if isinstance(image, torch.Tensor):  # CHW or HW float in [0, 1] (pipeline output_type="pt")
        array = image.detach().float().cpu().numpy()
        return np.moveaxis(array, 0, -1) if array.ndim == 3 else array
    if isinstance(image, (Image.Image, np.ndarray)):
        return image
    raise UserError(f"unsupported image type {type(image).__name__}; pass a PIL image, numpy array or file path")


def _pil_to_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(image, dtype=np.uint16)
    if image.mode == "I":  # Pillow decodes 16-bit PNGs as 32-bit "I" in some versions
        array = np.asarray(image)
        if array.min() < 0 or array.max() > 65535:
            raise UserError("32-bit integer image with values outside 0..65535; convert it to 8 or 16 bit")
        return array.astype(np.uint16)
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    if image.mode in ("1", "L", "RGB"):
        return np.asarray(image)
    if image.mode == "LA":
        return np.asarray(image)[..., 0]
    return np.asarray(image.convert("RGB"))


def to_grayscale(image: ImageLike) -> tuple[np.ndarray, float]:
    """Step 1 of the protocol: a 2-D array and the ``maxval`` of its bit depth."""
    raw = _open(image)
    array = _pil_to_array(raw) if isinstance(raw, Image.Image) else raw
    maxval = _maxval(array)
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., 0] if array.shape[-1] == 1 else array[..., :3].mean(axis=-1, dtype=np.float64)
    if array.ndim != 2:
        raise UserError(f"image array of shape {array.shape}: expected H x W or H x W x C with C in 1, 3, 4")
    return array, maxval


def _maxval(array: np.ndarray) -> float:
    if array.dtype == np.uint8:
        return 255.0
    if array.dtype == np.uint16:
        return 65535.0
    if array.dtype == np.bool_:
        return 1.0
    if array.dtype.kind == "f":
        if array.size and (float(array.min()) < 0.0 or float(array.max()) > 1.0):
            raise UserError("float images must lie in [0, 1]; convert to uint8/uint16 or rescale")
        return 1.0
    raise UserError(f"unsupported image dtype {array.dtype}; use uint8, uint16, or float in [0, 1]")


def preprocess(image: ImageLike, protocol: Protocol = PROTOCOL) -> torch.Tensor:
    """Apply the protocol to one image: a ``1 x size x size`` float32 tensor in [-1024, 1024]."""
    gray, maxval = to_grayscale(image)
    h, w = gray.shape
    side = min(h, w)
    top, left = h // 2 - side // 2, w // 2 - side // 2
    crop = gray[top : top + side, left : left + side]
    scaled = ((crop.astype(np.float64) / maxval * 2.0 - 1.0) * protocol.value_range).astype(np.float32)
    if side != protocol.size:
        resized = Image.fromarray(scaled).resize((protocol.size, protocol.size), Image.Resampling.BILINEAR)
        scaled = np.array(resized, dtype=np.float32)
    return torch.from_numpy(scaled)[None]


# --------------------------------------------------------------------------- weights
def weights_file_name(weights: str = DEFAULT_WEIGHTS) -> str:
    """The file name torchxrayvision expects for ``weights`` (the basename of its release URL)."""
    import torchxrayvision as xrv

    info = xrv.models.model_urls.get(weights)
    if info is None or "densenet" not in info["weights_url"]:
        names = sorted(k for k, v in xrv.models.model_urls.items() if "densenet" in v["weights_url"])
        raise UserError(f"unknown xrv DenseNet weights {weights!r}; choose one of {names}")
    return os.path.basename(info["weights_url"])


def default_cache_dir() -> Path:
    """torchxrayvision's weights folder, ``~/.torchxrayvision/models_data``."""
    return Path(os.path.expanduser(os.path.join("~", ".torchxrayvision", "models_data")))


def resolve_weights_file(weights: str = DEFAULT_WEIGHTS, weights_path: str | os.PathLike | None = None) -> Path:
    """The local file for ``weights`` (``weights_path`` may be the file or its folder); never downloads."""
    name = weights_file_name(weights)
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        candidate = path / name if path.is_dir() else path
        if candidate.is_file():
            return candidate
        raise MissingWeightsError(
            f"xrv weights {weights!r} not found at {candidate}; put {name} there "
            f"(from {_url(weights)}) or pass allow_random_weights=True / --allow-random-weights for a flagged test run"
        )
    candidate = default_cache_dir() / name
    if candidate.is_file():
        return candidate
    raise MissingWeightsError(
        f"xrv weights {weights!r} are not on disk and the network is off: place the file {name} "
        f"in the folder {default_cache_dir()} (download it elsewhere from {_url(weights)}), or pass "
        f"weights_path=/--weights-path, or allow_random_weights=True / --allow-random-weights (results are flagged)"
    )


def _url(weights: str) -> str:
    import torchxrayvision as xrv

    return xrv.models.model_urls[weights]["weights_url"]


def load_xrv_densenet(
    weights: str = DEFAULT_WEIGHTS, weights_path: str | os.PathLike | None = None, allow_random_weights: bool = False
) -> tuple[torch.nn.Module, bool]:
    """The xrv DenseNet-121 in eval mode and whether its weights are random.

    The file is read by us, never through ``xrv.models.DenseNet(weights=...)``, which downloads
    when the file is missing. Loaded networks are cached per file (and the random one per name).
    """
    weights_file_name(weights)  # validates the name
    try:
        path = resolve_weights_file(weights, weights_path)
    except MissingWeightsError:
        if not allow_random_weights:
            raise
        logger.warning(
            "xrv weights %r not found: using a RANDOM DenseNet-121 (seed %d); scores are flagged "
            '"random_weights": true and are NOT comparable to published numbers',
            weights,
            RANDOM_WEIGHTS_SEED,
        )
        return _random_densenet(weights), True
    return _densenet_from_file(weights, str(path)), False


def _bare_densenet(weights: str) -> torch.nn.Module:
    import torchxrayvision as xrv

    labels = list(xrv.models.model_urls[weights]["labels"])
    model = xrv.models.DenseNet(weights=None, num_classes=len(labels))
    model.pathologies = model.targets = labels
    return model


@lru_cache(maxsize=2)
def _random_densenet(weights: str) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        return _bare_densenet(weights).eval()


@lru_cache(maxsize=2)
def _densenet_from_file(weights: str, path: str) -> torch.nn.Module:
    import torchxrayvision as xrv

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)  # a plain state dict
    except Exception:  # noqa: BLE001 - xrv's own files are pickled nn.Modules: a local file the user placed
        saved = torch.load(path, map_location="cpu", weights_only=False)
    state = saved.state_dict() if isinstance(saved, torch.nn.Module) else saved
    model = _bare_densenet(weights)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"{path} is not a DenseNet-121 checkpoint for xrv weights {weights!r}: {err}") from err
    model.op_threshs = torch.tensor(xrv.models.model_urls[weights]["op_threshs"], dtype=torch.float32)
    logger.info("loaded xrv DenseNet-121 %r from %s", weights, path)
    return model.eval()


def clear_model_cache() -> None:
    """Forget loaded networks (e.g. after placing a weights file)."""
    _random_densenet.cache_clear()
    _densenet_from_file.cache_clear()


# --------------------------------------------------------------------------- extraction
def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _prefetch(batches: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run ``batches`` in a background thread (decode/resize overlaps the forward pass)."""
    done = object()
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def worker() -> None:
        try:
            for item in batches:
                if stop.is_set():
                    return
                put(item)
        except BaseException as err:  # re-raised in the consumer
            put(err)
        put(done)

    threading.Thread(target=worker, daemon=True).start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # the consumer stopped early or failed: let the worker exit
        stop.set()


def _batched(images: Iterable[ImageLike], batch_size: int, protocol: Protocol) -> Iterator[torch.Tensor]:
    batch: list[torch.Tensor] = []
    for image in images:
        batch.append(preprocess(image, protocol))
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


class XRVFeatureExtractor:
    """Batched 1024-d xrv DenseNet-121 features (and pathology probabilities) under a protocol."""

    def __init__(
        self,
        weights: str | None = None,
        *,
        weights_path: str | os.PathLike | None = None,
        allow_random_weights: bool = False,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        protocol: Protocol = PROTOCOL,
    ) -> None:
        self.weights = weights or DEFAULT_WEIGHTS
        model, self.random_weights = load_xrv_densenet(self.weights, weights_path, allow_random_weights)
        self.device = torch.device(device) if device is not None else _default_device()
        self.model = model.to(self.device)
        self.batch_size = int(batch_size)
        self.protocol = protocol

    @property
    def pathologies(self) -> list[str]:
        return list(self.model.pathologies)

    def provenance(self) -> dict[str, Any]:
        """What every result carries: protocol id, weights name, and the random-weights flag."""
        out: dict[str, Any] = {"protocol": self.protocol.id, "weights": self.weights}
        if self.random_weights:
            out["random_weights"] = True
        return out

    @torch.inference_mode()
    def forward_tensors(self, batch: torch.Tensor) -> torch.Tensor:
        """Features of already preprocessed ``B x 1 x 224 x 224`` tensors (float32, on CPU)."""
        x = batch.to(self.device, non_blocking=True)
        # features in float32 even under an outer autocast: the statistics need the precision
        with torch.autocast(self.device.type, enabled=False):
            maps = self.model.features(x.float())
            return F.adaptive_avg_pool2d(F.relu(maps), 1).flatten(1)

    @torch.inference_mode()
    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Pathology probabilities from features (xrv's operating-point normalisation when known)."""
        import torchxrayvision as xrv

        out = torch.sigmoid(self.model.classifier(features.to(self.device).float()))
        op = getattr(self.model, "op_threshs", None)
        return xrv.models.op_norm(out, op.to(out.device)) if op is not None else out

    def iter_features(self, images: Iterable[ImageLike]) -> Iterator[torch.Tensor]:
        """Yield ``B x 1024`` float32 feature batches (on the extractor's device) for ``images``."""
        for batch in _prefetch(_batched(images, self.batch_size, self.protocol)):
            yield self.forward_tensors(batch)

    def features(self, images: Iterable[ImageLike]) -> np.ndarray:
        """All features as one ``n x 1024`` float32 array (holds them in memory: prefer ``iter_features``)."""
        chunks = [f.cpu().numpy() for f in self.iter_features(images)]
        return np.concatenate(chunks) if chunks else np.zeros((0, FEATURE_DIM), np.float32)
