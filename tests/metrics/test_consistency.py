"""Class consistency counting: label spellings, No Finding, unsupported labels are counted not dropped."""

from __future__ import annotations

import numpy as np
import pytest

from hf_cxr_diffusion.metrics import ConsistencyCounter
from hf_cxr_diffusion.metrics.consistency import xrv_index

PATHS = ["Atelectasis", "Effusion", "Pleural_Thickening", "Enlarged Cardiomediastinum", "Lung Opacity"]


def test_label_spellings_map_to_xrv_names() -> None:
    assert xrv_index("Pleural Effusion", PATHS) == 1
    assert xrv_index("pleural thickening", PATHS) == 2
    assert xrv_index("Enlarged_Cardiomediastinum", PATHS) == 3
    assert xrv_index("Support Devices", PATHS) is None


def test_rates_per_condition() -> None:
    counter = ConsistencyCounter(PATHS)
    probs = np.array(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0],  # Atelectasis prompt, found
            [0.1, 0.2, 0.0, 0.0, 0.0],  # Atelectasis prompt, missed
            [0.0, 0.7, 0.0, 0.0, 0.6],  # Effusion + Lung Opacity prompt, both found
            [0.1, 0.1, 0.1, 0.1, 0.1],  # No Finding (empty labels), nothing predicted: consistent
            [0.1, 0.1, 0.1, 0.8, 0.1],  # No Finding, something predicted: inconsistent
            [0.9, 0.9, 0.9, 0.9, 0.9],  # unsupported label only
        ]
    )
    labels = [["Atelectasis"], ["Atelectasis"], ["Pleural Effusion", "Lung Opacity"], [], ["No Finding"], ["Support Devices"]]
    counter.update(probs, labels)
    out = counter.result()
    per = out["per_condition"]
    assert per["Atelectasis"] == {"rate": 0.5, "correct": 1, "n": 2}
    assert per["Pleural Effusion"]["rate"] == 1.0 and per["Lung Opacity"]["rate"] == 1.0
    assert per["No Finding"] == {"rate": 0.5, "correct": 1, "n": 2}
    assert out["unsupported_labels"] == {"Support Devices": 1}
    assert out["mean_rate"] == pytest.approx((0.5 + 1 + 1 + 0.5) / 4)
