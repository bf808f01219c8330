"""Label vocabularies and the uncertainty policies of CheXpert (Irvin et al. 2019, AAAI).

Raw label values follow the CheXpert convention: ``1`` positive, ``0`` negative, ``-1``
uncertain, blank (NaN) not mentioned. A policy turns them into *positives* (the ``labels``
column) and, for U-Ignore, a mask of the uncertain entries (the ``uncertain`` column):

- ``ones`` (U-Ones): uncertain counts as positive;
- ``zeros`` (U-Zeros): uncertain counts as negative;
- ``ignore`` (U-Ignore): uncertain is neither; it is listed in ``uncertain`` so a loss can mask it.

"No Finding" is kept consistent with the positives: it is dropped whenever another finding
(other than the corpus's exempt labels, e.g. CheXpert's "Support Devices") is positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hf_cxr_diffusion.errors import UserError

UNCERTAIN_POLICIES: tuple[str, ...] = ("ones", "zeros", "ignore")
NO_FINDING = "No Finding"

#: CheXpert / MIMIC-CXR observations, in the column order of the official CSVs
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

#: NIH ChestX-ray14 findings (Wang et al. 2017, CVPR) in the paper's order, after "No Finding"
NIH_LABELS: tuple[str, ...] = (
    "No Finding",
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

_VALID_VALUES = frozenset({1.0, 0.0, -1.0})
_TEXT_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0, "": np.nan}


def parse_label_column(values: pd.Series, *, file: str, column: str, header_lines: int = 1) -> np.ndarray:
    """Raw label values -> float array of 1 / 0 / -1 / NaN; anything else is a :class:`UserError`.

    The error names the file, the 1-based line (index + ``header_lines`` + 1) and the column.
    """
    if pd.api.types.is_numeric_dtype(values):
        out = values.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~(np.isnan(out) | np.isin(out, list(_VALID_VALUES)))
    else:
        text = values.astype("string").str.strip().fillna("")
        mapped = text.map(_TEXT_VALUES)
        bad = (mapped.isna() & (text != "")).to_numpy()
        out = mapped.to_numpy(dtype=np.float64, na_value=np.nan)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        line = int(values.index[first]) + header_lines + 1
        raise UserError(
            f"{file} line {line} column {column!r}: label value {str(values.iloc[first])!r} is not one of 1, 0, -1 "
            f"or blank ({int(bad.sum())} such value(s) in this column); fix the file"
        )
    return out


@dataclass(frozen=True)
class LabelSet:
    """Positives and uncertain entries of every row after a policy, as boolean ``(rows, labels)`` arrays."""

    names: tuple[str, ...]
    positive: np.ndarray
    uncertain: np.ndarray

    def ids(self, which: str = "positive") -> list[list[int]]:
        """Per row, the label indices (canonical order) that are set in ``positive`` or ``uncertain``."""
        return rows_to_ids(getattr(self, which))

    def counts(self) -> dict[str, int]:
        """Number of rows positive for each label."""
        return dict(zip(self.names, (int(c) for c in self.positive.sum(axis=0))))


def check_policy(uncertain: str) -> str:
    if uncertain not in UNCERTAIN_POLICIES:
        raise UserError(f"unknown uncertainty policy {uncertain!r}; use --uncertain one of {', '.join(UNCERTAIN_POLICIES)}")
    return uncertain


def apply_policy(
    values: np.ndarray,
    names: Sequence[str],
    uncertain: str = "ones",
    *,
    no_finding_exempt: Sequence[str] = (),
) -> LabelSet:
    """Apply U-Ones / U-Zeros / U-Ignore to raw values ``(rows, labels)`` and make "No Finding" consistent."""
    check_policy(uncertain)
    values = np.asarray(values, dtype=np.float64)
    is_uncertain = values == -1.0
    positive = values == 1.0
    if uncertain == "ones":
        positive = positive | is_uncertain
    masked = is_uncertain if uncertain == "ignore" else np.zeros_like(is_uncertain)
    names = tuple(names)
    if NO_FINDING in names:
        nf = names.index(NO_FINDING)
        findings = [i for i, n in enumerate(names) if n != NO_FINDING and n not in no_finding_exempt]
        conflict = positive[:, findings].any(axis=1)
        positive[:, nf] &= ~conflict
        masked[:, nf] &= ~conflict
    return LabelSet(names=names, positive=positive, uncertain=masked)


def rows_to_ids(matrix: np.ndarray) -> list[list[int]]:
    """Boolean ``(rows, labels)`` -> list of set indices per row (vectorised over distinct rows)."""
    keys, inverse = unique_rows(matrix)
    per_key = [np.flatnonzero(k).tolist() for k in keys]
    return [per_key[i] for i in inverse]


def unique_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of a boolean matrix and, per row, the index of its distinct row (bit-packed: fast)."""
    matrix = np.asarray(matrix, dtype=bool).reshape(len(matrix), -1)
    if matrix.shape[1] <= 62:
        codes = matrix.astype(np.int64) @ (np.int64(1) << np.arange(matrix.shape[1], dtype=np.int64))
        _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
        return matrix[first], np.asarray(inverse).reshape(-1)
    keys, inverse = np.unique(matrix, axis=0, return_inverse=True)
    return keys, np.asarray(inverse).reshape(-1)


def multi_hot(ids: Sequence[int], n: int) -> list[int]:
    """The ``labels`` column (positive class ids) of one row -> a length-``n`` 0/1 vector."""
    out = [0] * n
    for i in ids:
        if not 0 <= int(i) < n:
            raise UserError(f"label id {i} is outside 0..{n - 1}; is n the number of label names of this dataset?")
        out[int(i)] = 1
    return out


def parse_label_frame(frame: pd.DataFrame, names: Sequence[str], *, file: str) -> np.ndarray:
    """The label columns ``names`` of a CSV frame -> ``(rows, labels)`` floats, validated column by column."""
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise UserError(f"{file} has no column(s) {', '.join(map(repr, missing))}; is this the right file for the corpus?")
    if not len(names):
        return np.zeros((len(frame), 0))
    return np.stack([parse_label_column(frame[n], file=file, column=n) for n in names], axis=1)
