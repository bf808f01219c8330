"""Patient-level, hash-stable splits."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from hf_cxr_diffusion.data.splits import assign_splits, hash_split, shared_patients
from hf_cxr_diffusion.errors import UserError


@pytest.fixture(scope="module")
def patients(chexpert_frame) -> pd.Series:
    return chexpert_frame["Path"].str.extract(r"(patient\d+)", expand=False)


def test_hash_split_is_patient_disjoint_on_real_chexpert(patients):
    splits = hash_split(patients, (0.7, 0.15, 0.15))
    assert shared_patients(patients, splits) == []
    per_patient = pd.DataFrame({"p": patients, "s": splits}).drop_duplicates("p")["s"].value_counts(normalize=True)
    assert abs(per_patient["train"] - 0.7) < 0.01 and abs(per_patient["test"] - 0.15) < 0.01


def test_hash_split_is_stable_under_reordering_and_subsetting(patients):
    full = hash_split(patients)
    sub = patients.sample(frac=0.1, random_state=1)
    np.testing.assert_array_equal(hash_split(sub).to_numpy(), full.loc[sub.index].to_numpy())
    # the split is a function of sha256(patient id) alone
    unit = int.from_bytes(hashlib.sha256(b"patient00001").digest()[:8], "big") / 2**64
    expected = "train" if unit < 0.8 else "validation" if unit < 0.9 else "test"
    assert full.iloc[0] == expected


def test_official_split_kept_and_trainval_divided_by_patient():
    frame = pd.DataFrame({"patient_id": [f"p{i // 3}" for i in range(300)],
                          "split": ["test"] * 30 + ["trainval"] * 270})
    splits = assign_splits(frame, "auto", (0.5, 0.5, 0.0))
    assert (splits[:30] == "test").all()
    assert set(splits[30:]) == {"train", "validation"}
    assert shared_patients(frame["patient_id"], splits) == []
    assert set(assign_splits(frame, "hash", (0.5, 0.5, 0.0))) == {"train", "validation"}


def test_split_errors():
    frame = pd.DataFrame({"patient_id": ["a"], "split": [""]})
    with pytest.raises(UserError, match="no official split"):
        assign_splits(frame, "official")
    with pytest.raises(UserError, match="summing to 1"):
        assign_splits(frame, "hash", (0.5, 0.2, 0.2))
    with pytest.raises(UserError, match="unknown split mode"):
        assign_splits(frame, "random")
