"""Real and synthetic image pools for the classifier experiments, decoded once and shared.

Classes come from the ``labels`` column (``List(ClassLabel)``, the positive findings), matched by
*name* between the real and the synthetic dataset:

* ``binary``: one label L -> classes ``("no L", "L")`` (the study's normal / pneumonia);
* ``multiclass``: labels L1..Lk -> the one of them a row has (rows with none or several are
  skipped and counted);
* ``multilabel``: labels L1..Lk -> a multi-hot target (per-class AUC).

The test split is the real dataset's ``test`` split; rows of patients that also appear in the
real training/validation data are removed from it (and counted), and synthetic rows never
enter it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from hf_cxr_diffusion.data.loading import load_dataset_dict
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.generation.prompts import label_names_of

logger = logging.getLogger(__name__)

LABEL_MODES: tuple[str, ...] = ("binary", "multiclass", "multilabel")
_VALIDATION_NAMES = ("validation", "valid", "val")
#: names of "nothing found" labels, never chosen as the binary target by default
_NORMAL_NAMES = {"no finding", "normal"}


@dataclass(frozen=True)
class LabelSpace:
    """How positive findings become classifier targets."""

    mode: str
    labels: tuple[str, ...]

    @property
    def class_names(self) -> tuple[str, ...]:
        return (f"no {self.labels[0]}", self.labels[0]) if self.mode == "binary" else self.labels

    @property
    def num_outputs(self) -> int:
        return len(self.class_names)

    def target(self, positives: set[str]) -> int | tuple[int, ...] | None:
        """Target of a row with these positive findings (``None``: not usable in multiclass)."""
        if self.mode == "binary":
            return int(self.labels[0] in positives)
        hits = tuple(int(name in positives) for name in self.labels)
        if self.mode == "multilabel":
            return hits
        return hits.index(1) if sum(hits) == 1 else None

    def stratum(self, target: int | tuple[int, ...]) -> Hashable:
        """The class name (binary / multi-class) or the tuple of positive labels (multi-label)."""
        if isinstance(target, tuple):
            return tuple(name for name, hit in zip(self.labels, target) if hit)
        return self.class_names[target]


def make_label_space(mode: str, labels: Sequence[str] | None, names: Sequence[str]) -> LabelSpace:
    """Check ``--label-mode`` / ``--labels`` against the real dataset's label names."""
    if mode not in LABEL_MODES:
        raise UserError(f"--label-mode {mode!r} is not one of {', '.join(LABEL_MODES)}")
    chosen = tuple(labels) if labels else ()
    unknown = [x for x in chosen if x not in names]
    if unknown:
        raise UserError(f"--labels {unknown} not in the real dataset's labels {list(names)}")
    if not chosen:
        findings = [x for x in names if x.lower() not in _NORMAL_NAMES]
        if mode == "binary" and len(findings) != 1:
            raise UserError(f"binary mode needs --labels LABEL: the dataset has labels {list(names)}")
        chosen = tuple(findings[:1]) if mode == "binary" else tuple(names)
    if mode == "binary" and len(chosen) != 1:
        raise UserError(f"binary mode takes exactly one label, got --labels {list(chosen)}")
    if mode == "multiclass" and len(chosen) < 2:
        raise UserError(f"multiclass mode needs at least two labels, got --labels {list(chosen)}")
    return LabelSpace(mode, chosen)


@dataclass
class Pool:
    """Decoded images (uint8, ``[N, 1, S, S]``) with targets, strata and patient ids."""

    name: str
    images: torch.Tensor
    targets: torch.Tensor
    patients: list[str]
    rows: list[int]
    skipped: int = 0
    strata: list[Hashable] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, indices: Sequence[int], name: str | None = None) -> Pool:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return Pool(
            name or self.name, self.images[idx], self.targets[idx], [self.patients[i] for i in indices],
            [self.rows[i] for i in indices], 0, [self.strata[i] for i in indices],
        )  # fmt: skip


def _square(img: Image.Image, size: int) -> np.ndarray:
    img = img.convert("L")
    if img.size != (size, size):
        img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def build_pool(ds: Any, space: LabelSpace, image_size: int, name: str) -> Pool:
    """Decode a ``datasets.Dataset`` split into a :class:`Pool` (rows unusable for the mode are counted)."""
    from tqdm.auto import tqdm

    names = label_names_of(ds, name)
    missing = [x for x in space.labels if x not in names]
    if missing:
        raise UserError(f"{name} has no label(s) {missing} (its labels: {list(names)}); generate it with those labels")
    labels = ds["labels"]
    patients = ds["patient_id"] if "patient_id" in ds.column_names else [f"{name}:{i}" for i in range(len(ds))]
    keep: list[int] = []
    targets: list[Any] = []
    for i, ids in enumerate(labels):
        target = space.target({names[j] for j in ids})
        if target is not None:
            keep.append(i)
            targets.append(target)
    skipped = len(labels) - len(keep)
    if skipped:
        logger.warning("%s: %d of %d rows skipped (not exactly one of %s)", name, skipped, len(labels), list(space.labels))
    images = np.zeros((len(keep), 1, image_size, image_size), dtype=np.uint8)
    column = ds.select_columns(["image"])
    for k, i in enumerate(tqdm(keep, desc=f"decode {name}", leave=False)):
        images[k, 0] = _square(column[i]["image"], image_size)
    dtype = torch.float32 if space.mode == "multilabel" else torch.long
    target_tensor = torch.tensor(targets, dtype=dtype).reshape(len(keep), -1) if space.mode == "multilabel" \
        else torch.tensor(targets, dtype=dtype)  # fmt: skip
    strata: list[Hashable] = [space.stratum(t) for t in targets]
    return Pool(name, torch.from_numpy(images), target_tensor, [str(patients[i]) for i in keep], keep, skipped, strata)


@dataclass
class Pools:
    """Everything the experiments draw from: real train / validation / test and the synthetic pool."""

    space: LabelSpace
    train: Pool
    validation: Pool
    test: Pool
    synthetic: Pool | None
    test_dropped_patient_overlap: int = 0


def _split_by_patient(pool: Pool, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    patients = sorted(set(pool.patients))
    rng = np.random.default_rng(seed)
    n_val = max(1, round(len(patients) * fraction))
    val_patients = set(rng.permutation(patients)[:n_val].tolist())
    val = [i for i, p in enumerate(pool.patients) if p in val_patients]
    train = [i for i, p in enumerate(pool.patients) if p not in val_patients]
    return train, val


def _as_dataset(source: Any) -> Any:
    return load_dataset_dict(source) if isinstance(source, str | os.PathLike) else source


def load_pools(
    real: str | Any,
    synthetic: str | Any | None,
    space_args: tuple[str, Sequence[str] | None],
    image_size: int,
    seed: int = 0,
    val_fraction: float = 0.1,
) -> Pools:
    """Load and decode the real splits and the synthetic pool (datasets folders, hub ids or DatasetDicts)."""
    real_dd = _as_dataset(real)
    if "train" not in real_dd or "test" not in real_dd:
        raise UserError(f"real dataset {real} needs 'train' and 'test' splits (has {sorted(real_dd)}); prepare it with `cxr-diffusion prepare`")
    space = make_label_space(space_args[0], space_args[1], label_names_of(real_dd["train"], f"real dataset {real}"))
    train = build_pool(real_dd["train"], space, image_size, "real train")
    val_name = next((n for n in _VALIDATION_NAMES if n in real_dd), None)
    if val_name is not None:
        validation = build_pool(real_dd[val_name], space, image_size, f"real {val_name}")
    else:
        tr, va = _split_by_patient(train, val_fraction, seed)
        logger.info("no validation split: %d real training patients' images (%d) held out for validation", len(set(train.subset(va).patients)), len(va))
        train, validation = train.subset(tr, "real train"), train.subset(va, "real validation (from train)")
    test = build_pool(real_dd["test"], space, image_size, "real test")
    seen = set(train.patients) | set(validation.patients)
    clean = [i for i, p in enumerate(test.patients) if p not in seen]
    dropped = len(test) - len(clean)
    if dropped:
        logger.warning("%d real test images belong to training/validation patients: removed from the test split", dropped)
        test = test.subset(clean, "real test")
    synth = None
    if synthetic is not None:
        from datasets import DatasetDict, concatenate_datasets

        synth_dd = _as_dataset(synthetic)
        synth_ds = concatenate_datasets(list(synth_dd.values())) if isinstance(synth_dd, DatasetDict) else synth_dd
        synth = build_pool(synth_ds, space, image_size, "synthetic")
    return Pools(space, train, validation, test, synth, dropped)
