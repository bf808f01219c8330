"""Open the image sets to evaluate: a dataset folder (prepared, synthetic, or plain images) or a hub id."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.errors import UserError

logger = logging.getLogger(__name__)


def load_split(spec: str, split: str | None = None, *, limit: int | None = None) -> Any:
    """One ``datasets.Dataset`` split of ``spec`` (a folder or hub id); ``split=None`` takes the only one.

    ``limit`` keeps the first rows (logged, and visible in the report counts).
    """
    import datasets

    try:
        loaded = datasets.load_dataset(str(Path(spec)) if Path(spec).exists() else spec)
    except (FileNotFoundError, ValueError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        raise UserError(f"cannot load dataset {spec!r}: {err}; pass a dataset folder or a cached hub id") from err
    names = list(loaded)
    if split is None:
        if len(names) != 1:
            raise UserError(f"dataset {spec!r} has splits {names}; choose one with --split/--synthetic-split")
        split = names[0]
    if split not in loaded:
        raise UserError(f"dataset {spec!r} has no split {split!r} (it has {names}); pass one of them")
    ds = loaded[split]
    if limit is not None and limit < len(ds):
        logger.info("using the first %d of %d rows of %s[%s]", limit, len(ds), spec, split)
        ds = ds.select(range(limit))
    return ds
