"""Class consistency: label spellings, No Finding, unsupported labels counted, xrv heads of every weight set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchxrayvision as xrv

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.metrics import ClassConsistency, Context, TorchClassifier
from hf_cxr_diffusion.metrics.base import Batch
from hf_cxr_diffusion.metrics.consistency import xrv_index
from hf_cxr_diffusion.metrics.features import XRVHeads

PATHS = ["Atelectasis", "Effusion", "Pleural_Thickening", "Enlarged Cardiomediastinum", "Lung Opacity"]
DENSENETS = sorted(k for k, v in xrv.models.model_urls.items() if "densenet" in v["weights_url"])


class _Fixed:
    """A classifier whose probabilities are given per batch (columns = ``labels``)."""

    def __init__(self, labels: list[str], probabilities: np.ndarray) -> None:
        self.labels, self.name, self._p = labels, "fixed", probabilities

    def probabilities(self, batch: Batch) -> np.ndarray:
        return self._p


def _consistency(classifier, labels) -> dict:
    metric = ClassConsistency(Context(4, "test", "test"), classifier=classifier)
    metric.update(Batch("synthetic", torch.zeros(len(labels), 4), labels))
    return metric.compute()


def test_label_spellings_map_to_xrv_names() -> None:
    assert xrv_index("Pleural Effusion", PATHS) == 1
    assert xrv_index("pleural thickening", PATHS) == 2
    assert xrv_index("Enlarged_Cardiomediastinum", PATHS) == 3
    assert xrv_index("Support Devices", PATHS) is None


def test_rates_per_condition() -> None:
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
    out = _consistency(_Fixed(PATHS, probs), labels)
    per = out["per_condition"]
    assert per["Atelectasis"] == {"rate": 0.5, "correct": 1, "n": 2}
    assert per["Pleural Effusion"]["rate"] == 1.0 and per["Lung Opacity"]["rate"] == 1.0
    assert per["No Finding"] == {"rate": 0.5, "correct": 1, "n": 2}
    assert out["unsupported_labels"] == {"Support Devices": 1}
    assert out["score"] == pytest.approx((0.5 + 1 + 1 + 0.5) / 4) and out["classifier"] == "fixed"


@pytest.mark.parametrize("weights", DENSENETS)
def test_xrv_heads_of_every_weight_set_no_finding_and_one_finding(weights: str) -> None:
    """All-negative logits -> No Finding consistent; empty label entries are no heads (they were 0.5 = positive)."""
    info = xrv.models.model_urls[weights]
    linear = torch.nn.Linear(8, len(info["labels"]))
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.fill_(-30.0)
    heads = XRVHeads(weights, linear)
    assert heads.labels == [p for p in info["labels"] if p]
    out = _consistency(HeadsOf(heads), [[], ["No Finding"]])
    assert out["per_condition"]["No Finding"] == {"rate": 1.0, "correct": 2, "n": 2}
    target = heads.labels[0]
    with torch.no_grad():
        linear.bias[info["labels"].index(target)] = 30.0
    out = _consistency(HeadsOf(heads), [[target], []])
    assert out["per_condition"][target]["rate"] == 1.0 and out["per_condition"]["No Finding"]["rate"] == 0.0


class HeadsOf:
    """XRVHeads on a batch's features, as the HeadsClassifier does for a loaded model."""

    def __init__(self, heads: XRVHeads) -> None:
        self.heads, self.labels, self.name = heads, heads.labels, "xrv heads"

    def probabilities(self, batch: Batch) -> np.ndarray:
        return self.heads(torch.zeros(len(batch.features), 8)).detach().numpy()


def test_torch_classifier_needs_a_label_list_and_matching_outputs() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    with pytest.raises(UserError, match="label list"):
        TorchClassifier(net, [])
    clf = TorchClassifier(net, ["Cardiomegaly", "Edema"])
    batch = Batch("synthetic", torch.zeros(3, 4), [["Edema"]] * 3, pixels=torch.zeros(3, 1, 4, 4))
    assert clf.probabilities(batch).shape == (3, 2)
    with pytest.raises(UserError, match="shape"):
        TorchClassifier(net, ["Cardiomegaly", "Edema", "Mass"]).probabilities(batch)
