"""Feature models: a network that turns images into pooled features (and classifier probabilities) under a protocol.

:class:`FeatureModel` holds what every network shares (batching with a prefetch thread,
float32 forward passes, provenance); :func:`load_feature_model` picks one by name:
``xrv`` (TorchXRayVision DenseNet-121, :mod:`.features`) or ``phantom`` (the phantom feature
network, :mod:`.phantom`).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.metrics.decode import ImageLike
from hf_cxr_diffusion.metrics.protocols import Protocol, preprocess

FEATURE_MODELS = ("xrv", "phantom")


def default_device() -> torch.device:
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


def versions() -> dict[str, str]:
    """Library versions a feature number depends on."""
    import torchxrayvision

    return {"torch": torch.__version__, "numpy": np.__version__, "torchxrayvision": torchxrayvision.__version__}


class FeatureModel:
    """Pooled features and classifier probabilities of one network under one protocol.

    Subclasses set ``name``, ``feature_dim``, ``labels`` (the classifier heads, in column order of
    :meth:`probabilities`), ``random_weights``, ``weights`` / ``weights_sha256`` and implement
    :meth:`_features` and :meth:`_probabilities`.
    """

    name: str = ""
    feature_dim: int = 0

    def __init__(self, model: torch.nn.Module, protocol: Protocol, *, device: str | torch.device | None, batch_size: int) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device)
        self.protocol = protocol
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        self.labels: list[str] = []
        self.random_weights = False
        self.weights: str | None = None
        self.weights_sha256: str | None = None

    def provenance(self) -> dict[str, Any]:
        """What every result carries: protocol, feature model, weights name + sha256, versions, TF32 on CUDA."""
        out: dict[str, Any] = {
            "protocol": self.protocol.id, "feature_model": self.name, "weights": self.weights,
            "weights_sha256": self.weights_sha256, "versions": versions(),
        }
        if self.device.type == "cuda":
            out["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
        if self.random_weights:
            out["random_weights"] = True
        return out

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        return preprocess(image, self.protocol)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _probabilities(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def forward_tensors(self, batch: torch.Tensor) -> torch.Tensor:
        """Features of already preprocessed ``B x 1 x S x S`` tensors."""
        x = batch.to(self.device, non_blocking=True)
        # features in float32 even under an outer autocast: the statistics need the precision
        with torch.autocast(self.device.type, enabled=False):
            return self._features(x.float())

    @torch.inference_mode()
    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """``B x len(labels)`` probabilities of the classifier heads (unsupported heads removed)."""
        with torch.autocast(self.device.type, enabled=False):
            return self._probabilities(features.to(self.device).float())

    def iter_batches(self, images: Iterable[ImageLike]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(pixels, features)`` per batch: the preprocessed inputs and their ``B x d`` features."""
        def batches() -> Iterator[torch.Tensor]:
            batch: list[torch.Tensor] = []
            for image in images:
                batch.append(self.preprocess(image))
                if len(batch) == self.batch_size:
                    yield torch.stack(batch)
                    batch = []
            if batch:
                yield torch.stack(batch)

        for pixels in _prefetch(batches()):
            yield pixels, self.forward_tensors(pixels)

    def iter_features(self, images: Iterable[ImageLike]) -> Iterator[torch.Tensor]:
        for _, feats in self.iter_batches(images):
            yield feats

    def features(self, images: Iterable[ImageLike]) -> np.ndarray:
        """All features as one ``n x d`` float32 array (holds them in memory: prefer ``iter_features``)."""
        chunks = [f.cpu().numpy() for f in self.iter_features(images)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.feature_dim), np.float32)


def load_feature_model(
    name: str = "xrv",
    *,
    protocol: str | Protocol | None = None,
    weights: str | None = None,
    weights_path: str | os.PathLike | None = None,
    allow_random_weights: bool = False,
    device: str | torch.device | None = None,
    batch_size: int = 32,
) -> FeatureModel:
    """The feature model ``name`` (``xrv`` or ``phantom``) under ``protocol`` (default: the model's own)."""
    from hf_cxr_diffusion.metrics.protocols import get_protocol

    if name not in FEATURE_MODELS:
        raise UserError(f"unknown feature model {name!r}; choose one of {', '.join(FEATURE_MODELS)} (--feature-model)")
    chosen = get_protocol(protocol, name)
    if name == "xrv":
        from hf_cxr_diffusion.metrics.features import XRVFeatureExtractor

        return XRVFeatureExtractor(weights, weights_path=weights_path, allow_random_weights=allow_random_weights,
                                   device=device, batch_size=batch_size, protocol=chosen)
    from hf_cxr_diffusion.metrics.phantom import PhantomFeatureExtractor

    if weights is not None:
        raise UserError("--weights names xrv DenseNet weights; for the phantom network pass its folder as --weights-path")
    return PhantomFeatureExtractor(weights_path, allow_random_weights=allow_random_weights, device=device,
                                   batch_size=batch_size, protocol=chosen)
