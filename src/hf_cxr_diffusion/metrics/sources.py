"""Views of the image sets to evaluate (datasets are loaded by :func:`hf_cxr_diffusion.data.loading.load_split`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


class Column(Sequence):
    """A lazy, indexable view of one column of a ``datasets.Dataset`` (rows decoded on access)."""

    def __init__(self, dataset: Any, column: str) -> None:
        self.dataset, self.column = dataset, column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[int(index)][self.column]

    def __iter__(self) -> Iterator[Any]:
        for batch in self.dataset.select_columns([self.column]).iter(batch_size=64):
            yield from batch[self.column]


def dataset_labels(dataset: Any, column: str) -> tuple[list[list[Any]] | None, list[str] | None]:
    """The ``labels`` column (ClassLabel ids) and its names, or ``(None, None)`` when the column is absent."""
    if column not in dataset.column_names:
        return None, None
    inner = getattr(dataset.features[column], "feature", None)
    names = list(getattr(inner, "names", None) or []) or None
    return list(dataset[column]), names


def is_real_corpus(spec: str) -> bool:
    """Whether a dataset folder says it was prepared from a real corpus: its prepare info file records
    ``"phantom_corpus": false``. Folders that do not record it (older prepares) are not assumed real."""
    import json

    from hf_cxr_diffusion.artefacts import PREPARE_INFO_FILE

    try:
        data = json.loads((Path(spec) / PREPARE_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("phantom_corpus") is False
