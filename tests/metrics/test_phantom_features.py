"""Metrics on the phantom feature network: its own names and protocol, and numbers that mean something on phantoms.

All run on the shipped, trained phantom feature network (a missing weights file is an error, not random weights).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.metrics import FID, Context, evaluate_images, load_feature_model
from hf_cxr_diffusion.metrics.base import Batch
from hf_cxr_diffusion.phantoms.draw import draw_phantom, sample_params

RES = 64


def _phantoms(seeds) -> list[np.ndarray]:
    return [draw_phantom(sample_params(s, s), None, RES) for s in seeds]


@pytest.fixture(scope="module")
def sets() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    one = draw_phantom(sample_params(7, 7), None, RES).astype(np.float64)
    collapsed = [np.clip(one + rng.normal(0, 2, one.shape), 0, 255).astype(np.uint8) for _ in range(24)]
    different = [255 - im for im in _phantoms(range(200, 224))]  # inverted radiographs: clearly not the corpus
    return {"a": _phantoms(range(24)), "b": _phantoms(range(100, 124)), "collapsed": collapsed, "different": different}


def test_phantom_numbers_carry_their_own_name_and_protocol(sets) -> None:
    result = evaluate_images(sets["a"], sets["b"], ("fid", "vendi"), feature_model="phantom")
    assert "phantom_fid" in result and "xrv_fid" not in result
    assert result["protocol"] == "phantom-fid-v1" and result["feature_model"] == "phantom"
    assert result["phantom_fid"]["protocol"] == "phantom-fid-v1" and result["vendi"]["feature_model"] == "phantom"
    with pytest.raises(UserError, match="phantom"):
        evaluate_images(sets["a"], sets["b"], ("xrv_fid",), feature_model="phantom")


def test_fid_of_disjoint_real_sets_far_below_fid_to_a_different_set(sets) -> None:
    model = load_feature_model("phantom")
    feats = {k: torch.from_numpy(model.features(v)) for k, v in sets.items()}

    def fid(x: str, y: str) -> float:
        metric = FID(Context(model.feature_dim, model.protocol.id, "phantom"))
        metric.update(Batch("real", feats[x]))
        metric.update(Batch("synthetic", feats[y]))
        return metric.compute()["score"]

    assert fid("a", "b") < 0.25 * fid("a", "different")


def test_vendi_of_a_mode_collapsed_set_below_a_diverse_one(sets) -> None:
    diverse = evaluate_images(None, sets["a"], ("vendi",), feature_model="phantom")
    collapsed = evaluate_images(None, sets["collapsed"], ("vendi",), feature_model="phantom")
    assert collapsed["vendi"]["score"] < diverse["vendi"]["score"]


def test_merging_results_of_two_protocols_names_both() -> None:
    x = torch.randn(6, 128)
    phantom = FID(Context(128, "phantom-fid-v1", "phantom"))
    other = FID(Context(128, "xrv-fid-v2", "xrv"))
    phantom.update(Batch("real", x))
    other.update(Batch("real", x))
    with pytest.raises(UserError, match="phantom-fid-v1") as err:
        phantom.merge(other)
    assert "xrv-fid-v2" in str(err.value)


def _labelled(finding: str | None, seeds) -> list[np.ndarray]:
    return [draw_phantom(sample_params(s, s), {finding: 1.0} if finding else None, RES) for s in seeds]


def test_class_consistency_of_real_phantoms_on_the_demo_classes_with_the_shipped_network() -> None:
    """The trained phantom network (shipped weights) finds the drawn finding in >= 90% of real phantoms."""
    images, labels = [], []
    for i, finding in enumerate(("Cardiomegaly", "Pleural Effusion", None)):
        images += _labelled(finding, range(5000 + 100 * i, 5000 + 100 * i + 30))
        labels += [[finding] if finding else []] * 30
    result = evaluate_images(None, images, ("class_consistency",), labels_synthetic=labels, feature_model="phantom")
    cc = result["class_consistency"]
    assert "random_weights" not in result and result["protocol"] == "phantom-fid-v1"
    for name in ("No Finding", "Cardiomegaly", "Pleural Effusion"):
        assert cc["per_condition"][name]["rate"] >= 0.9, (name, cc["per_condition"][name])
