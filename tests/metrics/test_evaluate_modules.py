"""The ``evaluate`` modules in metrics/xrv_fid and metrics/vendi: loading, inputs, chunks, weights rules."""

from __future__ import annotations

from pathlib import Path

import evaluate
import numpy as np
import pytest
from metrics_helpers import SMALL, blob_image
from PIL import Image

from hf_cxr_diffusion.errors import MissingWeightsError
from hf_cxr_diffusion.metrics import fid_from_features, vendi_score

MODULES = Path(__file__).resolve().parents[2] / "metrics"


@pytest.fixture()
def elsewhere(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # load by absolute path from an unrelated working directory
    return tmp_path


def test_module_folders_are_complete() -> None:
    for name in ("xrv_fid", "vendi", "cxr_memorisation"):
        folder = MODULES / name
        card = (folder / "README.md").read_text()
        assert card.startswith("---\n") and "\n---\n" in card[4:]
        assert "hf-cxr-diffusion" in (folder / "requirements.txt").read_text()
        assert "from evaluate.utils import launch_gradio_widget" in (folder / "app.py").read_text()


def test_xrv_fid_on_features_equals_library_and_chunks_equal_one_call(elsewhere) -> None:
    rng = np.random.default_rng(0)
    real, syn = rng.normal(size=(30, 16)), rng.normal(size=(22, 16)) + 0.2
    fid = evaluate.load(str(MODULES / "xrv_fid"))
    one = fid.compute(predictions=list(syn), references=list(real))
    assert one["xrv_fid"] == pytest.approx(fid_from_features(real.astype(np.float32), syn.astype(np.float32)), rel=1e-6)
    assert (one["n_real"], one["n_synthetic"], one["protocol"]) == (30, 22, "precomputed-features")
    for syn_chunk, real_chunk in zip(np.array_split(syn, 4), np.array_split(real[::-1], 4)):  # unequal sizes
        fid.add_batch(predictions=list(syn_chunk), references=list(real_chunk))
    chunked = fid.compute()
    assert chunked["xrv_fid"] == pytest.approx(one["xrv_fid"], rel=1e-12)
    assert chunked["n_synthetic"] == 22


def test_vendi_on_features_honours_q(elsewhere) -> None:
    feats = np.abs(np.random.default_rng(1).normal(size=(40, 24)))
    vendi = evaluate.load(str(MODULES / "vendi"))
    for q in (0.5, 2.0):
        out = vendi.compute(predictions=list(feats), q=q)
        assert out["vendi"] == pytest.approx(vendi_score(feats.astype(np.float32), q), rel=1e-6)
        assert out["q"] == q and out["n_synthetic"] == 40


def test_xrv_fid_on_images_of_every_kind_flags_random_weights(elsewhere) -> None:
    img = blob_image(3)
    Image.fromarray(img).save(elsewhere / "a.png")
    real = [str(elsewhere / "a.png"), img.astype(np.uint16) * 257, blob_image(4)]
    syn = [Image.fromarray(blob_image(5)), np.stack([blob_image(6)] * 3, -1)]
    fid = evaluate.load(str(MODULES / "xrv_fid"))
    out = fid.compute(predictions=syn, references=real, allow_random_weights=True, protocol=SMALL)
    assert out["random_weights"] is True and out["protocol"] == SMALL.id
    assert (out["n_real"], out["n_synthetic"]) == (3, 2) and out["xrv_fid"] > 0
    fid.add_batch(predictions=syn[:1], references=real[:2])
    fid.add_batch(predictions=syn[1:], references=real[2:])
    assert fid.compute(allow_random_weights=True, protocol=SMALL)["xrv_fid"] == pytest.approx(out["xrv_fid"], rel=1e-9)


def test_missing_weights_error_through_the_module(elsewhere, empty_xrv_cache) -> None:
    vendi = evaluate.load(str(MODULES / "vendi"))
    with pytest.raises(MissingWeightsError, match="models_data"):
        vendi.compute(predictions=[blob_image(0), blob_image(1)])


def test_memorisation_module_flags_a_copied_feature_row(elsewhere) -> None:
    train = np.random.default_rng(2).normal(size=(12, 16))
    syn = np.vstack([np.random.default_rng(3).normal(size=(3, 16)), train[7:8]])
    mem = evaluate.load(str(MODULES / "cxr_memorisation"))
    out = mem.compute(predictions=list(syn), references=list(train), threshold=0.99, top_k=1)
    assert out["top_pairs"][0]["synthetic_index"] == 3 and out["top_pairs"][0]["training_index"] == 7
    assert out["n_flagged"] == 1 and out["fraction_above_threshold"] == 0.25
    assert len(out["max_similarity"]) == 4
