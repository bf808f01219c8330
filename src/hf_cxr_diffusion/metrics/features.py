"""TorchXRayVision DenseNet-121 as a :class:`~hf_cxr_diffusion.metrics.extractor.FeatureModel`.

Features are the 1024-d pooled activations of the DenseNet-121 of Cohen et al., "TorchXRayVision:
A library of chest X-ray datasets and models" (MIDL 2022), with ``features2`` semantics (ReLU +
global average pool over the last dense block), under protocol ``xrv-fid-v2`` by default (see
:mod:`.protocols`). The classifier heads are the weights' non-empty labels with xrv's
operating-point normalisation; empty label-list entries are not heads.

Weights never come from the network: they are read from torchxrayvision's cache
(``~/.torchxrayvision/models_data/<file>``) or an explicit path, else :class:`MissingWeightsError`.
They are read with ``torch.load(weights_only=True)``; xrv's own files are pickled modules, so
the unpickler is allowed exactly the ``torch.nn`` / ``torchxrayvision`` module classes the file
names (checked before loading) and nothing else: a file that asks for any other global is refused.
"""

from __future__ import annotations

import importlib
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hf_cxr_diffusion.errors import MissingWeightsError, UserError
from hf_cxr_diffusion.metrics.extractor import FeatureModel
from hf_cxr_diffusion.metrics.protocols import PROTOCOL, Protocol

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "densenet121-res224-all"
FEATURE_DIM = 1024
#: seed of the random DenseNet used when ``allow_random_weights=True`` and no file is on disk
RANDOM_WEIGHTS_SEED = 0
#: module prefixes whose ``nn.Module`` classes a weights file may name
_MODULE_PREFIXES = ("torch.nn.modules.", "torchxrayvision.", "torchvision.models.")


def _model_info(weights: str) -> dict[str, Any]:
    import torchxrayvision as xrv

    info = xrv.models.model_urls.get(weights)
    if info is None or "densenet" not in info["weights_url"]:
        names = sorted(k for k, v in xrv.models.model_urls.items() if "densenet" in v["weights_url"])
        raise UserError(f"unknown xrv DenseNet weights {weights!r}; choose one of {names}")
    return info


def weights_file_name(weights: str = DEFAULT_WEIGHTS) -> str:
    """The file name torchxrayvision expects for ``weights`` (the basename of its release URL)."""
    return os.path.basename(_model_info(weights)["weights_url"])


def default_cache_dir() -> Path:
    """torchxrayvision's weights folder, ``~/.torchxrayvision/models_data``."""
    return Path(os.path.expanduser(os.path.join("~", ".torchxrayvision", "models_data")))


def resolve_weights_file(weights: str = DEFAULT_WEIGHTS, weights_path: str | os.PathLike | None = None) -> Path:
    """The local file for ``weights`` (``weights_path`` may be the file or its folder); never downloads."""
    name = weights_file_name(weights)
    url = _model_info(weights)["weights_url"]
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        candidate = path / name if path.is_dir() else path
        if candidate.is_file():
            return candidate
        raise MissingWeightsError(
            f"xrv weights {weights!r} not found at {candidate}; put {name} there "
            f"(from {url}) or pass allow_random_weights=True / --allow-random-weights for a flagged test run"
        )
    candidate = default_cache_dir() / name
    if candidate.is_file():
        return candidate
    raise MissingWeightsError(
        f"xrv weights {weights!r} are not on disk and the network is off: place the file {name} "
        f"in the folder {default_cache_dir()} (download it elsewhere from {url}), or pass "
        f"weights_path=/--weights-path, or allow_random_weights=True / --allow-random-weights (results are flagged)"
    )


def _allowed_module_classes(path: str) -> list[type]:
    """The nn.Module classes a pickled-module file names, or :class:`UserError` for any other global."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:  # noqa: BLE001 - not a torch file at all
        raise UserError(f"{path} is not a readable torch weights file ({type(err).__name__}: {err})") from err
    classes = []
    for name in names:
        module, _, attr = name.rpartition(".")
        obj = None
        if name.startswith(_MODULE_PREFIXES):
            try:
                obj = getattr(importlib.import_module(module), attr, None)
            except ImportError:
                obj = None
        if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
            raise UserError(
                f"{path} asks to load {name!r}, which is not a torch/torchxrayvision module class; refusing to unpickle "
                "it (weights are loaded with weights_only=True). Save the network's state_dict() and pass that file"
            )
        classes.append(obj)
    return classes


def load_weights_safely(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a state-dict file or an xrv pickled-module file, never executing pickled code."""
    path = str(path)
    classes = _allowed_module_classes(path)
    try:
        with torch.serialization.safe_globals(classes):
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError/RuntimeError for refused or corrupt files
        raise UserError(f"{path} could not be loaded as weights ({type(err).__name__}: {str(err).splitlines()[0]})") from err
    state = saved.state_dict() if isinstance(saved, torch.nn.Module) else saved
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(saved).__name__}, not a DenseNet or its state_dict")
    return state


def _bare_densenet(weights: str) -> torch.nn.Module:
    import torchxrayvision as xrv

    labels = list(_model_info(weights)["labels"])
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
    model = _bare_densenet(weights)
    try:
        model.load_state_dict(load_weights_safely(path))
    except (RuntimeError, TypeError) as err:
        raise UserError(f"{path} is not a DenseNet-121 checkpoint for xrv weights {weights!r}: {err}") from err
    logger.info("loaded xrv DenseNet-121 %r from %s", weights, path)
    return model.eval()


@lru_cache(maxsize=8)
def _sha256_cached(path: str, mtime: float) -> str:
    """sha256 of a weights file, hashed once per (path, modification time)."""
    from hf_cxr_diffusion.hashing import sha256_file

    return sha256_file(path)


def load_xrv_densenet(
    weights: str = DEFAULT_WEIGHTS, weights_path: str | os.PathLike | None = None, allow_random_weights: bool = False
) -> tuple[torch.nn.Module, Path | None]:
    """The xrv DenseNet-121 in eval mode and the file it came from (``None``: random weights).

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
        return _random_densenet(weights), None
    return _densenet_from_file(weights, str(path)), path


def clear_model_cache() -> None:
    """Forget loaded networks (e.g. after placing a weights file)."""
    _random_densenet.cache_clear()
    _densenet_from_file.cache_clear()


class XRVHeads:
    """The classifier heads of an xrv weights set: sigmoid, xrv's operating-point normalisation, and only the
    columns whose label is not empty (empty label-list entries are untrained outputs, not heads)."""

    def __init__(self, weights: str, classifier: torch.nn.Module) -> None:
        info = _model_info(weights)
        self.classifier = classifier
        self.op_threshs = torch.tensor(info["op_threshs"], dtype=torch.float32) if info.get("op_threshs") else None
        columns = [(i, p) for i, p in enumerate(info["labels"]) if p]
        self.index = torch.tensor([i for i, _ in columns], dtype=torch.long)
        self.labels = [p for _, p in columns]

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        import torchxrayvision as xrv

        out = torch.sigmoid(self.classifier(features))
        if self.op_threshs is not None:
            out = xrv.models.op_norm(out, self.op_threshs.to(out.device))
        return out[:, self.index.to(out.device)]


class XRVFeatureExtractor(FeatureModel):
    """Batched 1024-d xrv DenseNet-121 features and pathology probabilities under a protocol."""

    name = "xrv"
    feature_dim = FEATURE_DIM

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
        weights = weights or DEFAULT_WEIGHTS
        model, path = load_xrv_densenet(weights, weights_path, allow_random_weights)
        super().__init__(model, protocol, device=device, batch_size=batch_size)
        self.weights, self.random_weights = weights, path is None
        self.weights_sha256 = None if path is None else _sha256_cached(str(path), os.path.getmtime(path))
        self.heads = XRVHeads(weights, self.model.classifier)
        self.labels = list(self.heads.labels)

    @property
    def pathologies(self) -> list[str]:
        """The classifier's supported labels (xrv's label list without its empty entries)."""
        return list(self.labels)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(F.relu(self.model.features(x)), 1).flatten(1)

    def _probabilities(self, features: torch.Tensor) -> torch.Tensor:
        return self.heads(features)
