"""Protocol xrv-fid-v1 (formats, bit depths, crop) and the weights rules (missing, explicit, random)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from hf_cxr_diffusion.errors import MissingWeightsError, UserError
from hf_cxr_diffusion.metrics import PROTOCOL, Protocol, XRVFeatureExtractor, get_protocol, preprocess, weights_file_name
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
        if name in ("np_float", "torch_chw", "png_rgb", "np16_rgb"):  # float inputs, float32 channel means: 1 ulp
            torch.testing.assert_close(t, ref, rtol=0, atol=1e-3)
        else:
            assert torch.equal(t, ref), name
    extractor = XRVFeatureExtractor(allow_random_weights=True, batch_size=4)
    feats = extractor.features([inputs["png8"], inputs["png16"], inputs["np16_rgb"], inputs["pil"]])
    assert feats.shape == (4, 1024)
    assert np.array_equal(feats[0], feats[1]) and np.array_equal(feats[0], feats[3])
    np.testing.assert_allclose(feats[2], feats[0], rtol=1e-4, atol=1e-4)


def test_centre_crop_and_scaling_follow_the_protocol() -> None:
    img = np.zeros((64, 96), np.uint8)
    img[:, 16:80] = 255  # the centre 64 x 64 square is white, the side bands black
    out = preprocess(img, SMALL)
    assert torch.equal(preprocess(img, Protocol(id="v1-64", size=64, resize="pillow")), out)
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
    assert from_cache.heads.op_threshs is not None  # xrv operating points set for the classifier
    prov = from_cache.provenance()
    from hf_cxr_diffusion.hashing import sha256_file

    assert prov["weights_sha256"] == sha256_file(empty_xrv_cache / name) and prov["protocol"] == SMALL.id
    assert set(prov["versions"]) == {"torch", "numpy", "torchxrayvision"} and prov["feature_model"] == "xrv"


def test_weights_loader_never_unpickles_code(tmp_path) -> None:
    """A crafted pickle that would create a marker file when loaded is refused, and the marker never appears."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"features.conv0.weight": Payload()}, path)
    with pytest.raises(UserError, match="refusing"):
        XRVFeatureExtractor(weights_path=path)
    assert not marker.exists()


def test_unknown_protocol_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"^unknown protocol 'xrv-fid-v9'; choose one of .*xrv-fid-v1.*xrv-fid-v2"):
        get_protocol("xrv-fid-v9")
    with pytest.raises(UserError, match="phantom"):
        get_protocol("phantom-fid-v1", "xrv")


def test_v2_equals_the_paradigm_study_pipeline(tmp_path) -> None:
    """Pixels Under Pressure's scripts/evaluate.py, re-stated: skimage.io.imread -> xrv normalize(img, 255) ->
    channel mean -> XRayCenterCrop -> XRayResizer(224) -> relu(features) -> avg pool (their ``Feat``)."""
    import skimage.io
    import torch.nn.functional as F
    import torchxrayvision as xrv
    from torchvision import transforms

    paths = []
    for i, size in enumerate([(300, 260), (224, 224), (97, 130)]):
        paths.append(tmp_path / f"g{i}.png")
        Image.fromarray(blob_image(i, size)).save(paths[-1])
    Image.fromarray(np.stack([blob_image(9, (150, 180)), blob_image(10, (150, 180)), blob_image(11, (150, 180))], -1)).save(
        tmp_path / "rgb.png")
    paths.append(tmp_path / "rgb.png")
    crop_resize = transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)])

    def theirs(path) -> torch.Tensor:
        img = xrv.datasets.normalize(skimage.io.imread(str(path)), 255)
        img = img[None] if img.ndim == 2 else img.mean(2, keepdims=True).transpose(2, 0, 1)
        return torch.from_numpy(crop_resize(img))

    extractor = XRVFeatureExtractor(allow_random_weights=True, batch_size=4)
    assert extractor.protocol.id == "xrv-fid-v2"
    ours_px = torch.stack([preprocess(p) for p in paths])
    their_px = torch.stack([theirs(p) for p in paths])
    assert torch.equal(ours_px, their_px)
    with torch.inference_mode():
        their_feats = F.adaptive_avg_pool2d(F.relu(extractor.model.features(their_px)), 1).flatten(1)
    torch.testing.assert_close(torch.from_numpy(extractor.features(paths)), their_feats, rtol=0, atol=0)
