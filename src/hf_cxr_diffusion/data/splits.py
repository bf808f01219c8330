"""Patient-level, hash-stable train/validation/test splits.

A patient's split depends only on ``sha256(salt + patient_id)``, so it never changes when rows are
added, removed or reordered, and no patient can appear in two splits. Official splits are kept
where a corpus has one; rows the official split leaves open ("trainval") are hashed into the
remaining splits in proportion to the fractions.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from hf_cxr_diffusion.errors import UserError

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "validation", "test")
#: an official split that still has to be divided between train and validation
TRAINVAL = "trainval"
SPLIT_MODES: tuple[str, ...] = ("auto", "official", "hash")


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise UserError(f"split fractions {tuple(fractions)} must be three non-negative numbers (train, validation, test) summing to 1")
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def patient_unit(patient_ids: Sequence[str], salt: str = "") -> np.ndarray:
    """A stable number in [0, 1) per patient id (first 8 bytes of sha256)."""
    return np.array(
        [int.from_bytes(hashlib.sha256(f"{salt}{p}".encode()).digest()[:8], "big") / 2.0**64 for p in patient_ids]
    )


def hash_split(patient_ids: pd.Series, fractions: Sequence[float] = (0.8, 0.1, 0.1), *, salt: str = "",
               choices: Sequence[str] = SPLITS) -> pd.Series:
    """Assign each row the split of its patient; ``choices`` restricts to some splits (fractions renormalised)."""
    fractions = check_fractions(fractions)
    weights = np.array([fractions[SPLITS.index(c)] for c in choices])
    if weights.sum() == 0:
        weights = np.ones(len(choices))
    edges = np.cumsum(weights / weights.sum())
    codes, uniques = pd.factorize(patient_ids.astype(str))
    unit = patient_unit(uniques, salt)
    which = np.minimum(np.searchsorted(edges, unit, side="right"), len(choices) - 1)
    return pd.Series(np.asarray(choices, dtype=object)[which][codes], index=patient_ids.index)


def assign_splits(frame: pd.DataFrame, mode: str = "auto", fractions: Sequence[float] = (0.8, 0.1, 0.1), *,
                  salt: str = "") -> pd.Series:
    """The split of every row: the official one (``split`` column) where present, else by patient hash."""
    if mode not in SPLIT_MODES:
        raise UserError(f"unknown split mode {mode!r}; use one of {', '.join(SPLIT_MODES)}")
    official = frame["split"].fillna("").astype(str)
    has_official = bool((official != "").any())
    if mode == "official" and not has_official:
        raise UserError("this corpus has no official split in the data folder; use --splits hash")
    if mode == "hash" or not has_official:
        return hash_split(frame["patient_id"], fractions, salt=salt)
    out = official.copy()
    open_rows = official == TRAINVAL
    if open_rows.any():
        out[open_rows] = hash_split(frame.loc[open_rows, "patient_id"], fractions, salt=salt, choices=("train", "validation"))
    unassigned = out == ""
    if unassigned.any():
        out[unassigned] = hash_split(frame.loc[unassigned, "patient_id"], fractions, salt=salt)
    warn_shared_patients(frame["patient_id"], out)
    return out


def shared_patients(patient_ids: pd.Series, splits: pd.Series) -> list[str]:
    """Patient ids that occur in more than one split (empty for a patient-disjoint split)."""
    per_patient = pd.DataFrame({"p": patient_ids.to_numpy(), "s": splits.to_numpy()}).groupby("p")["s"].nunique()
    return sorted(per_patient[per_patient > 1].index.astype(str))


def warn_shared_patients(patient_ids: pd.Series, splits: pd.Series) -> None:
    shared = shared_patients(patient_ids, splits)
    if shared:
        logger.warning("the official split shares %d patient(s) between splits (e.g. %s); use --splits hash for a "
                       "patient-disjoint split", len(shared), ", ".join(shared[:5]))
