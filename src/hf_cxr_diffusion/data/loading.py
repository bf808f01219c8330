"""The one way every stage opens a dataset: a local folder (prepared, synthetic, prompts-only, plain
images) or a hub id, through ``datasets.load_dataset``, with one-line :class:`UserError` messages.

``datasets`` 5.2 caches a local folder under its base name and card metadata, not its files: two
folders called ``prepared`` with the same card (or one folder rewritten in place) get the first one's
cached rows. A local folder is therefore loaded with its data files resolved explicitly, which puts
their absolute paths and modification times into the cache key (and keeps the cache for unchanged
folders, unlike ``download_mode="force_redownload"``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.errors import UserError

logger = logging.getLogger(__name__)


def _local_folder(name_or_path: str | os.PathLike) -> Path | None:
    path = Path(name_or_path).expanduser()
    return path if path.exists() else None


def _load_errors() -> tuple[type[BaseException], ...]:
    import datasets

    return (FileNotFoundError, ValueError, OSError, ConnectionError, datasets.exceptions.DatasetsError)


def load_dataset_dict(name_or_path: str | os.PathLike, config_name: str | None = None, *, streaming: bool = False) -> Any:
    """``datasets.load_dataset(name_or_path, config_name)`` as a ``DatasetDict`` (``IterableDatasetDict`` when streaming).

    Args:
        name_or_path: a local dataset folder or a hub id present in the local cache.
        config_name: a config of the dataset card (e.g. ``"prompts"`` of a prepared folder).
        streaming: iterate the files without building the Arrow cache.
    """
    import datasets

    local = _local_folder(name_or_path)
    source = str(local) if local is not None else str(name_or_path)
    try:
        if local is None or streaming or not local.is_dir():
            return datasets.load_dataset(source, config_name, streaming=streaming)
        builder = datasets.load_dataset_builder(source, config_name)
        files = {split: list(paths) for split, paths in (builder.config.data_files or {}).items()}
        return datasets.load_dataset(source, config_name, data_files=files or None)
    except _load_errors() as err:
        raise UserError(
            f"cannot load dataset {source!r} ({type(err).__name__}: {err}); pass a dataset folder "
            "(e.g. from `cxr-diffusion prepare` or `generate`) or a hub id present in the local cache"
        ) from err


def load_split(name_or_path: str | os.PathLike, split: str | None = None, *, config_name: str | None = None,
               limit: int | None = None, data_dir: str | os.PathLike | None = None) -> Any:
    """One split of :func:`load_dataset_dict` as a ``datasets.Dataset``.

    Args:
        name_or_path: a local dataset folder or a cached hub id.
        split: the split to return; ``None`` takes the only split (an error if there are several).
        config_name: a config of the dataset card.
        limit: keep only the first ``limit`` rows (logged).
        data_dir: for a prompts-only dataset, the local corpus its rows are joined to
            (:func:`hf_cxr_diffusion.data.attach.attach_images`, after ``limit``).
    """
    loaded = load_dataset_dict(name_or_path, config_name)
    names = list(loaded)
    if split is None:
        if len(names) != 1:
            raise UserError(f"dataset {str(name_or_path)!r} has splits {names}; choose one of them")
        split = names[0]
    if split not in loaded:
        raise UserError(f"dataset {str(name_or_path)!r} has no split {split!r} (splits present: {names}); "
                        "choose one of them")
    ds = loaded[split]
    if limit is not None and limit < len(ds):
        logger.info("using the first %d of %d rows of %s[%s]", limit, len(ds), name_or_path, split)
        ds = ds.select(range(limit))
    if data_dir is not None:
        from hf_cxr_diffusion.data.attach import attach_images

        ds = attach_images(ds, data_dir).dataset
    return ds
