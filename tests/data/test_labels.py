"""Label policies on the real CheXpert label file (torchxrayvision's chexpert_train.csv.gz)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hf_cxr_diffusion.data.labels import (
    CHEXPERT_LABELS, apply_policy, multi_hot, parse_label_column, parse_label_frame, rows_to_ids, unique_rows,
)
from hf_cxr_diffusion.errors import UserError

FINDINGS = [n for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices")]


@pytest.fixture(scope="module")
def values(chexpert_frame):
    return parse_label_frame(chexpert_frame, CHEXPERT_LABELS, file="chexpert_train.csv.gz")


@pytest.mark.parametrize("policy", ["ones", "zeros", "ignore"])
def test_counts_match_direct_pandas_count(chexpert_frame, values, policy):
    labels = apply_policy(values, CHEXPERT_LABELS, policy, no_finding_exempt=("Support Devices",))
    positive_values = [1.0, -1.0] if policy == "ones" else [1.0]
    expected = {n: int(chexpert_frame[n].isin(positive_values).sum()) for n in CHEXPERT_LABELS}
    any_finding = chexpert_frame[FINDINGS].isin(positive_values).any(axis=1)
    expected["No Finding"] = int(((chexpert_frame["No Finding"].isin(positive_values)) & ~any_finding).sum())
    assert labels.counts() == expected
    assert len(chexpert_frame) == 223414


def test_policies_differ_exactly_where_the_file_has_minus_one(chexpert_frame, values):
    ones = apply_policy(values, CHEXPERT_LABELS, "ones", no_finding_exempt=("Support Devices",))
    zeros = apply_policy(values, CHEXPERT_LABELS, "zeros", no_finding_exempt=("Support Devices",))
    ignore = apply_policy(values, CHEXPERT_LABELS, "ignore", no_finding_exempt=("Support Devices",))
    minus_one = (chexpert_frame[list(CHEXPERT_LABELS)] == -1).to_numpy()
    findings = [CHEXPERT_LABELS.index(n) for n in CHEXPERT_LABELS if n != "No Finding"]
    # on every finding column, U-Ones and U-Zeros differ exactly at the -1 cells
    np.testing.assert_array_equal((ones.positive != zeros.positive)[:, findings], minus_one[:, findings])
    # U-Ignore keeps U-Zeros' positives and masks exactly the -1 cells
    np.testing.assert_array_equal(ignore.positive, zeros.positive)
    np.testing.assert_array_equal(ignore.uncertain[:, findings], minus_one[:, findings])
    assert minus_one.sum() == 139958


def test_no_finding_never_coexists_with_a_finding(values):
    labels = apply_policy(values, CHEXPERT_LABELS, "ones", no_finding_exempt=("Support Devices",))
    nf = labels.positive[:, CHEXPERT_LABELS.index("No Finding")]
    others = labels.positive[:, [CHEXPERT_LABELS.index(n) for n in FINDINGS]].any(axis=1)
    assert not (nf & others).any()
    # Support Devices is exempt: the first real row is "No Finding" + "Support Devices"
    assert labels.ids()[0] == [0, 13]


def test_conflicting_no_finding_is_dropped():
    vals = np.array([[1.0, 1.0, np.nan], [1.0, np.nan, 1.0], [1.0, -1.0, np.nan]])
    names = ("No Finding", "Edema", "Support Devices")
    assert apply_policy(vals, names, "ones", no_finding_exempt=("Support Devices",)).ids() == [[1], [0, 2], [1]]
    assert apply_policy(vals, names, "zeros", no_finding_exempt=("Support Devices",)).ids() == [[1], [0, 2], [0]]


def test_bad_label_value_names_file_line_and_column():
    frame = pd.DataFrame({"Edema": ["1.0", "", "2", "-1"]})
    with pytest.raises(UserError, match=r"train.csv line 4 column 'Edema': label value '2' is not one of 1, 0, -1"):
        parse_label_column(frame["Edema"], file="train.csv", column="Edema")
    with pytest.raises(UserError, match=r"line 3 column 'Edema': label value '0.5'"):
        parse_label_column(pd.Series([1.0, 0.5]), file="x.csv", column="Edema")
    with pytest.raises(UserError, match="unknown uncertainty policy 'maybe'"):
        apply_policy(np.zeros((1, 1)), ("Edema",), "maybe")


def test_multi_hot_and_ids():
    assert multi_hot([0, 3], 5) == [1, 0, 0, 1, 0]
    assert multi_hot([], 2) == [0, 0]
    with pytest.raises(UserError, match="outside 0..1"):
        multi_hot([2], 2)
    matrix = np.array([[True, False, True], [False, False, False], [True, False, True]])
    assert rows_to_ids(matrix) == [[0, 2], [], [0, 2]]
    keys, inverse = unique_rows(matrix)
    np.testing.assert_array_equal(keys[inverse], matrix)
