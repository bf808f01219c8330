"""Join a prompts-only dataset (published without pixels) back to the user's own licensed copy of the corpus.

``publish dataset --prompts-only`` shares prompts, labels, splits and each row's corpus-relative
``source_path``, never an image; ``attach_images(dataset, data_dir)`` gives every row an ``image``
column pointing at ``data_dir / source_path``. Paths go through the one containment check of the
corpus readers (:func:`hf_cxr_diffusion.data.corpora.base.check_paths`: no absolute paths, no ``..``,
no symlinks out of ``data_dir``); rows whose file is missing stop with an error naming them, or with
``on_missing="skip"`` are dropped, counted and listed. Images are decoded lazily, row by row, by
``datasets.Image`` (nothing is read here but the file system's directory entries).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.errors import UserError

logger = logging.getLogger(__name__)

#: the prompts-only column holding each image's path relative to the corpus folder
SOURCE_PATH_COLUMN = "source_path"
IMAGE_COLUMN = "image"


@dataclass(frozen=True)
class Attached:
    """The dataset with its ``image`` column, and the rows left out because their file is missing."""

    dataset: Any
    #: ``{"split", "source_path", "reason"}`` per row left out (``on_missing="skip"``)
    skipped: tuple[dict[str, str], ...] = ()


def _attach_split(ds: Any, root: Path, split: str, on_missing: str) -> tuple[Any, list[dict[str, str]]]:
    import datasets
    import pandas as pd

    from hf_cxr_diffusion.data.corpora.base import check_paths

    if SOURCE_PATH_COLUMN not in ds.column_names:
        raise UserError(f"split {split!r} has no {SOURCE_PATH_COLUMN!r} column: not a prompts-only dataset of "
                        "`cxr-diffusion prepare`; nothing to join the images by")
    if IMAGE_COLUMN in ds.column_names:
        raise UserError(f"split {split!r} already has an {IMAGE_COLUMN!r} column; attach_images is for prompts-only data")
    frame = pd.DataFrame({"path": ds[SOURCE_PATH_COLUMN], "origin_file": f"split {split} {SOURCE_PATH_COLUMN}",
                          "origin_row": range(1, len(ds) + 1)})
    relative = check_paths(frame, root, resolve=True).tolist()
    present = [os.path.isfile(root / rel) for rel in relative]
    skipped = [{"split": split, "source_path": rel, "reason": "missing"} for rel, ok in zip(relative, present) if not ok]
    if skipped and on_missing != "skip":
        named = ", ".join(s["source_path"] for s in skipped[:5])
        raise UserError(f"{len(skipped)} of {len(ds)} image(s) of split {split!r} are missing from {root} (e.g. {named}); "
                        "fix --data-dir or pass on_missing='skip' (--on-missing skip) to leave them out")
    keep = [i for i, ok in enumerate(present) if ok]
    if len(keep) < len(ds):
        ds, relative = ds.select(keep), [relative[i] for i in keep]
    ds = ds.add_column(IMAGE_COLUMN, [str(root / rel) for rel in relative])
    return ds.cast_column(IMAGE_COLUMN, datasets.Image()), skipped


def attach_images(dataset: Any, data_dir: str | os.PathLike, *, on_missing: str = "error") -> Attached:
    """Add an ``image`` column (decoded lazily) joining each row's ``source_path`` to ``data_dir``.

    Args:
        dataset: a prompts-only ``datasets.Dataset`` or ``DatasetDict`` (``load_dataset("ORG/..._prompts")``).
        data_dir: the user's local copy of the corpus, laid out as the corpus ships it.
        on_missing: ``"error"`` (default) stops naming the missing files; ``"skip"`` leaves those rows out,
            counted in :attr:`Attached.skipped` and logged.
    """
    import datasets

    if on_missing not in ("error", "skip"):
        raise UserError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"--data-dir {root} does not exist; point it at your local copy of the corpus")
    if isinstance(dataset, datasets.Dataset):
        ds, skipped = _attach_split(dataset, root, str(dataset.split or "train"), on_missing)
        result: Any = ds
    else:
        parts = {name: _attach_split(ds, root, name, on_missing) for name, ds in dataset.items()}
        result = datasets.DatasetDict({name: ds for name, (ds, _) in parts.items()})
        skipped = [s for _, rows in parts.values() for s in rows]
    if skipped:
        logger.warning("left out %d row(s) whose image is missing from %s (first: %s)", len(skipped), root,
                       skipped[0]["source_path"])
    return Attached(result, tuple(skipped))
