"""Memorisation / privacy check: nearest training neighbour of every synthetic image.

For each synthetic image the highest cosine similarity of its features to any training image's,
following the feature-space copy detection of Somepalli et al., "Diffusion Art or Digital Forgery?
Investigating Data Replication in Diffusion Models" (CVPR 2023) and the patient re-identification
concern of Packhäuser et al., "Deep learning-based patient re-identification is able to exploit the
biometric nature of medical chest X-ray data" (Sci. Rep. 2022). Features are centred on the
training mean before the cosine (pooled ReLU activations are all positive, so raw cosines crowd
near 1); an exact copy still scores 1.0.

The near-duplicate threshold is calibrated on the data by default: the ``percentile`` of the
held-out real images' own nearest-training-neighbour similarities (real images of other patients
are not copies, so a synthetic image closer to a training image than almost every held-out real
image is suspicious). A fixed threshold stays available. Training rows are streamed in chunks
(spilled to a temporary file while accumulating), so memory is O(chunk² + chunk·d), flat in n_train.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.metrics.base import Batch, Context, Metric
from hf_cxr_diffusion.metrics.memorisation_report import memorisation_summary

#: percentile of held-out-real nearest-neighbour similarity used as the calibrated threshold
DEFAULT_PERCENTILE = 99.0
#: rows per chunk on either side of the similarity block
CHUNK = 2048
#: where copies are looked for: the feature model's features, or the model inputs box-downsampled to PIXEL_SIDE^2
SPACES = ("features", "pixels")
PIXEL_SIDE = 16


def pixel_rows(pixels: torch.Tensor, side: int = PIXEL_SIDE) -> np.ndarray:
    """Model inputs (``B x C x H x W``) averaged over channels and box-downsampled to ``side x side``, one row each.

    The pixel-space copy test of Carlini et al., "Extracting Training Data from Diffusion Models" (USENIX
    Security 2023), at a resolution an 8x-downsampling latent autoencoder keeps: a sample that copies a
    training image through the VAE stays its nearest neighbour here, while a feature network trained on
    sharp images may place it further away than other patients' images.
    """
    gray = pixels.detach().float().mean(dim=1, keepdim=True)
    return torch.nn.functional.adaptive_avg_pool2d(gray, side).flatten(1).cpu().numpy().astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _chunks(array: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(array), size):
        yield array[start : start + size]


def nearest_neighbours_chunked(
    train_chunks: Any, queries: np.ndarray, mean: np.ndarray | None, *, chunk: int = CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Per query row: (max cosine to any training row, its index), centring both on ``mean``.

    ``train_chunks`` is an iterable (re-iterable) of training row blocks; only one block of each
    side and one ``chunk x chunk`` similarity block are in memory at a time (float64).
    """
    queries = np.asarray(queries)
    best = np.full(len(queries), -np.inf)
    index = np.zeros(len(queries), dtype=np.int64)
    offset = 0
    for block in train_chunks:
        t = block.astype(np.float64) - (0.0 if mean is None else mean)
        t = _unit(t)
        for start in range(0, len(queries), chunk):
            q = queries[start : start + chunk].astype(np.float64) - (0.0 if mean is None else mean)
            sims = _unit(q) @ t.T
            arg = sims.argmax(axis=1)
            value = sims[np.arange(len(sims)), arg]
            better = value > best[start : start + chunk]
            best[start : start + chunk] = np.where(better, value, best[start : start + chunk])
            index[start : start + chunk] = np.where(better, arg + offset, index[start : start + chunk])
        offset += len(block)
    if offset == 0:
        raise UserError("memorisation check needs at least one training image")
    return best, index


def nearest_training_neighbours(
    train_features: np.ndarray, synthetic_features: np.ndarray, *, center: bool = True, chunk: int = CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Per synthetic row: (max cosine similarity to the training rows, index of that training row)."""
    train, syn = np.asarray(train_features), np.asarray(synthetic_features)
    if train.ndim != 2 or syn.ndim != 2 or train.shape[1] != syn.shape[1] or len(train) == 0:
        raise UserError(f"feature shapes {train.shape} (training) and {syn.shape} (synthetic) do not match")
    mean = train.mean(axis=0, dtype=np.float64) if center else None
    return nearest_neighbours_chunked(list(_chunks(train, chunk)), syn, mean, chunk=chunk)


def calibrated_threshold(held_out_similarity: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> dict[str, Any]:
    """The threshold at ``percentile`` of held-out real images' nearest-training similarities, and how it was made."""
    sims = np.asarray(held_out_similarity, dtype=np.float64)
    if not 0 < percentile <= 100:
        raise UserError(f"memorisation percentile must be in (0, 100], got {percentile}")
    if sims.size < 2:
        raise UserError(
            f"a calibrated memorisation threshold needs held-out real images (got {sims.size}); pass real images "
            "that are not in the training set, or a fixed threshold (--memorisation-threshold)"
        )
    return {
        "threshold": float(np.percentile(sims, percentile)),
        "threshold_method": "calibrated",
        "calibration": {
            "percentile": float(percentile), "n_held_out": int(sims.size),
            "how": f"{percentile:g}th percentile of each held-out real image's highest cosine similarity to any "
                   "training image (same features, same centring)",
            "held_out_max": float(sims.max()), "held_out_median": float(np.median(sims)),
        },
    }


class _SpilledRows:
    """Rows appended block by block to a temporary float32 file (RAM stays flat), re-readable in chunks."""

    def __init__(self, dim: int) -> None:
        self.dim, self.n = dim, 0
        self.sum = np.zeros(dim)
        self._dir = tempfile.TemporaryDirectory(prefix="cxr-memorisation-")
        self.path = Path(self._dir.name) / "rows.f32"
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in __iter__/close

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        self._fh.write(rows.tobytes())
        self.sum += rows.sum(axis=0, dtype=np.float64)
        self.n += len(rows)

    def merge(self, other: _SpilledRows) -> _SpilledRows:
        for block in other:
            self.append(block)
        return self

    def all_reduce(self, accelerator: Any = None) -> _SpilledRows:
        if accelerator is not None and accelerator.num_processes > 1 or (
            accelerator is None and torch.distributed.is_available() and torch.distributed.is_initialized()
        ):
            raise UserError("the memorisation check runs on one process: gather the training features first")
        return self

    def __iter__(self) -> Iterator[np.ndarray]:
        self._fh.flush()
        with open(self.path, "rb") as fh:
            while block := fh.read(CHUNK * self.dim * 4):
                yield np.frombuffer(block, dtype=np.float32).reshape(-1, self.dim)

    def close(self) -> None:
        self._fh.close()
        self._dir.cleanup()


class Memorisation(Metric):
    """Nearest-training-neighbour similarity of each synthetic image, flagged above a threshold.

    Args:
        context: the evaluation's shared context.
        threshold: a fixed cosine threshold; ``None`` calibrates it on the held-out ``real`` images.
        percentile: the calibration percentile (default 99).
        top_k: closest pairs listed (and drawn in the grid).
        center: centre features on the training mean before the cosine.
        space: ``features`` (the feature model's) or ``pixels`` (:func:`pixel_rows`; for small latent models
            whose VAE loses the texture a feature network relies on, e.g. the phantom base at 64 px).
    """

    name = "memorisation"
    higher_is_better: ClassVar[bool] = False
    headline_key: ClassVar[str] = "fraction_above_threshold"
    sides = ("synthetic", "training")
    optional = ("real",)

    def __init__(self, context: Context, *, threshold: float | None = None, percentile: float = DEFAULT_PERCENTILE,
                 top_k: int = 8, center: bool = True, space: str = "features") -> None:
        super().__init__(context)
        if space not in SPACES:
            raise UserError(f"memorisation space {space!r} is not one of {', '.join(SPACES)}")
        self.threshold, self.percentile, self.top_k, self.center = threshold, float(percentile), int(top_k), center
        self.space = space
        self.dim = context.feature_dim if space == "features" else PIXEL_SIDE * PIXEL_SIDE
        self.training = _SpilledRows(self.dim)
        self.kept: dict[str, list[np.ndarray]] = {"synthetic": [], "real": []}

    @classmethod
    def from_options(cls, context: Context, options: Any) -> Memorisation:
        return cls(context, threshold=options.memorisation_threshold, percentile=options.memorisation_percentile,
                   top_k=options.top_k, space=options.memorisation_space)

    @classmethod
    def check_inputs(cls, *, real: bool, training: bool, labels_synthetic: bool, labels_real: bool, options: Any) -> None:
        if not training and options.memorisation_threshold is None:
            raise UserError(
                "memorisation needs the generator's training images (training=...) to calibrate its threshold on the "
                "held-out real images; or pass a fixed memorisation_threshold to check the real images as the training set"
            )
        if not training and not real:
            raise UserError("memorisation needs the generator's training images (or real images with a fixed threshold)")

    def update(self, batch: Batch) -> None:
        if self.space == "pixels":
            if batch.pixels is None:
                raise UserError("memorisation in pixel space needs the model inputs of every batch")
            rows = pixel_rows(batch.pixels)
        else:
            rows = batch.features.detach().cpu().numpy().astype(np.float32)
        if batch.side == "training":
            self.training.append(rows)
        else:
            self.kept[batch.side].append(rows)

    def _states(self) -> list[Any]:
        return [self.training]

    def merge(self, other: Metric) -> Metric:
        super().merge(other)
        for side, rows in other.kept.items():
            self.kept[side] += rows
        return self

    def close(self) -> None:
        self.training.close()

    def _features(self, side: str) -> np.ndarray:
        rows = self.kept[side]
        return np.concatenate(rows) if rows else np.zeros((0, self.dim), np.float32)

    def compute(self) -> dict[str, Any]:
        syn = self._features("synthetic")
        if len(syn) == 0:
            raise UserError("memorisation check needs at least one synthetic image")
        if self.training.n == 0:
            raise UserError("memorisation check needs the generator's training images")
        mean = self.training.sum / self.training.n if self.center else None
        sims, nearest = nearest_neighbours_chunked(self.training, syn, mean)
        if self.threshold is not None:
            gate = {"threshold": float(self.threshold), "threshold_method": "fixed"}
        else:
            held_out = self._features("real")
            if len(held_out) < 2:
                raise UserError(
                    "a calibrated memorisation threshold needs held-out real images (the test split) besides the "
                    "training images; pass them, or a fixed threshold (--memorisation-threshold 0.95)"
                )
            gate = calibrated_threshold(nearest_neighbours_chunked(self.training, held_out, mean)[0], self.percentile)
        report = memorisation_summary(sims, nearest, threshold=gate["threshold"], top_k=self.top_k)
        space = "features" if self.space == "features" else f"pixels {PIXEL_SIDE}x{PIXEL_SIDE}"
        return {**report, **gate, "centered": self.center, "space": space, "n_training": self.training.n, **self.carried()}


def memorisation(
    train_features: np.ndarray,
    synthetic_features: np.ndarray,
    *,
    threshold: float | None = None,
    held_out_features: np.ndarray | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    top_k: int = 8,
    center: bool = True,
) -> dict[str, Any]:
    """The memorisation report of precomputed features (a fixed ``threshold``, or calibrated on ``held_out_features``)."""
    train = np.asarray(train_features)
    context = Context(feature_dim=train.shape[1] if train.ndim == 2 else 0, protocol="precomputed-features",
                      feature_model="precomputed")
    metric = Memorisation(context, threshold=threshold, percentile=percentile, top_k=top_k, center=center)
    try:
        for side, rows in (("training", train), ("synthetic", synthetic_features), ("real", held_out_features)):
            if rows is not None:
                for block in _chunks(np.asarray(rows), CHUNK):
                    metric.update(Batch(side, torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))))
        return {k: v for k, v in metric.compute().items() if k not in ("protocol", "feature_model")}
    finally:
        metric.close()
