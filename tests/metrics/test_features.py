"""Protocol xrv-fid-v1 (formats, bit depths, crop) and the weights rules (missing, explicit, random)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from hf_cxr_diffusion.errors import MissingWeightsError, UserError
from hf_cxr_diffusion.metrics import PROTOCOL, XRVFeatureExtractor, preprocess, weights_file_name
from hf_cxr_diffusion.metrics.features import load_xrv_densenet

from metrics_helpers import SMALL, blob_image


def _formats(tmp_path, img8: np.ndarray) -> dict[str, object]:
    """The same picture as 8-bit PNG, 16-bit PNG, RGB PNG, TIFF, numpy 8/16-bit and RGB arrays, PIL."""
    img16 = img8.astype(np.uint16) * 257  # exact 16-bit version of the 8-bit values
    Image.fromarray(img8).save(tmp_path / "a8.png")
    Image.fromarray(img16).save(tmp_path / "a16.png")
    Image.fromarray(np.stack([img8] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(img8).save(tmp_path / "a8.tif")
    return {
        "png8": tmp_path / "a8.png",
        "png16": str(tmp_path / "a16.png"),
        "png_rgb": tmp_path / "rgb.png",
        "tiff8": tmp_path / "a8.tif",
        "np8": img8,
        "np16": img16,
        "np16_rgb": np.stack([img16] * 3, -1),
        "np_float": img8.astype(np.float64) / 255.0,
        "pil": Image.fromarray(img8),
        "torch_chw": torch.from_numpy(img8.astype(np.float32) / 255.0)[None],
    }


def test_identical_images_under_formats_and_bit_depths_give_identical_features(tmp_path, empty_xrv_cache) -> None:
    img8 = blob_image(0, (80, 96))  # non-square: exercises the centre crop
    inputs = _formats(tmp_path, img8)
    tensors = {k: preprocess(v) for k, v in inputs.items()}
    ref = tensors.pop("png8")
    assert ref.shape == (1, PROTOCOL.size, PROTOCOL.size)
    assert float(ref.min()) >= -1024 and float(ref.max()) <= 1024
    for name, t in tensors.items():
        if name in ("np_float", "torch_chw"):  # float inputs round the scale once more
            torch.testing.assert_close(t, ref, rtol=0, atol=1e-3)
        else:
            assert torch.equal(t, ref), name
    extractor = XRVFeatureExtractor(allow_random_weights=True, batch_size=4)
    feats = extractor.features([inputs["png8"], inputs["png16"], inputs["np16_rgb"], inputs["pil"]])
    assert feats.shape == (4, 1024)
    assert np.array_equal(feats[0], feats[1]) and np.array_equal(feats[0], feats[2]) and np.array_equal(feats[0], feats[3])


def test_centre_crop_and_scaling_follow_the_protocol() -> None:
    img = np.zeros((64, 96), np.uint8)
    img[:, 16:80] = 255  # the centre 64 x 64 square is white, the side bands black
    out = preprocess(img, SMALL)
    assert out.shape == (1, 64, 64)
    assert torch.all(out == 1024.0)
    assert torch.all(preprocess(np.zeros((64, 64), np.uint16), SMALL) == -1024.0)
    with pytest.raises(UserError):
        preprocess(np.full((8, 8), 2.0))  # float outside [0, 1]
    with pytest.raises(UserError):
        preprocess("/nonexistent/image.png")


def test_missing_weights_error_names_file_and_folder(empty_xrv_cache) -> None:
    name = weights_file_name("densenet121-res224-all")
    assert name == "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
    with pytest.raises(MissingWeightsError) as err:
        XRVFeatureExtractor()
    assert name in str(err.value) and str(empty_xrv_cache) in str(err.value)
    assert not empty_xrv_cache.exists()  # nothing was created or downloaded
    with pytest.raises(UserError):
        weights_file_name("resnet50-res512-all")  # not a DenseNet


def test_random_weights_are_flagged_and_warned(empty_xrv_cache, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        extractor = XRVFeatureExtractor(allow_random_weights=True)
    assert extractor.random_weights and extractor.provenance()["random_weights"] is True
    assert "RANDOM" in caplog.text


def test_explicit_weights_file_and_cache_folder_are_used(tmp_path, empty_xrv_cache) -> None:
    """A weights file (here: a saved random network) is loaded, not flagged random, and gives its features."""
    model, _ = load_xrv_densenet("densenet121-res224-chex", None, True)
    name = weights_file_name("densenet121-res224-chex")
    empty_xrv_cache.mkdir(parents=True)
    torch.save(model, empty_xrv_cache / name)  # xrv ships pickled modules
    torch.save(model.state_dict(), tmp_path / "state.pt")
    from_cache = XRVFeatureExtractor("densenet121-res224-chex", protocol=SMALL)
    from_path = XRVFeatureExtractor("densenet121-res224-chex", weights_path=tmp_path / "state.pt", protocol=SMALL)
    assert not from_cache.random_weights and "random_weights" not in from_cache.provenance()
    x = preprocess(blob_image(1), SMALL)[None]
    with torch.inference_mode():
        expected = model.features2(x)
    torch.testing.assert_close(from_cache.forward_tensors(x), expected)
    torch.testing.assert_close(from_path.forward_tensors(x), expected)
    assert from_cache.model.op_threshs is not None  # xrv operating points set for the classifier
