"""Optional Inception-FID: missing-weights error, and equality with pytorch-fid's own pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metrics_helpers import blob_image
from PIL import Image

from hf_cxr_diffusion.errors import MissingWeightsError
from hf_cxr_diffusion.metrics.inception import inception_fid, inception_weights_file


@pytest.fixture()
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def test_missing_weights_name_file_and_folder(torch_home) -> None:
    with pytest.raises(MissingWeightsError) as err:
        inception_fid([blob_image(0)] * 2, [blob_image(1)] * 2, dims=(64,))
    assert "pt_inception-2015-12-05-6726825d.pth" in str(err.value) and str(torch_home) in str(err.value)
    assert not inception_weights_file().exists()


def _random_fid_inception_state() -> dict:
    """pytorch-fid's FID Inception architecture with random weights (its loader fed its own state dict)."""
    import pytorch_fid.inception as pfi

    built = []
    original = pfi._inception_v3

    def capture(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pfi, "_inception_v3", capture)
        patch.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: built[-1].state_dict())
        torch.manual_seed(0)
        return pfi.fid_inception_v3().state_dict()


def test_matches_pytorch_fid_pipeline_at_dim_64(torch_home, tmp_path) -> None:
    from pytorch_fid.fid_score import calculate_activation_statistics, calculate_frechet_distance
    from pytorch_fid.inception import InceptionV3

    inception_weights_file().parent.mkdir(parents=True)
    torch.save(_random_fid_inception_state(), inception_weights_file())
    real = [blob_image(s, (48, 48)) for s in range(3)]
    syn = [blob_image(10 + s, (48, 48)) for s in range(3)]
    paths = []
    for i, im in enumerate(real + syn):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.stack([im] * 3, -1)).save(paths[-1])
    ours = inception_fid(real, syn, dims=(64,), device="cpu", batch_size=3)
    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[64]]).eval()  # loads the cached file, no network
    m1, s1 = calculate_activation_statistics(paths[:3], model, batch_size=3, dims=64, device="cpu", num_workers=0)
    m2, s2 = calculate_activation_statistics(paths[3:], model, batch_size=3, dims=64, device="cpu", num_workers=0)
    ref = calculate_frechet_distance(m1, s1, m2, s2)
    assert ours["scores"]["64"] == pytest.approx(ref, rel=1e-6)
    assert (ours["n_real"], ours["n_synthetic"], ours["protocol"]) == (3, 3, "inception-fid-v1")


def test_evaluate_images_fails_early_without_inception_weights(torch_home) -> None:
    from hf_cxr_diffusion.metrics import evaluate_images

    with pytest.raises(MissingWeightsError, match="pt_inception"):
        evaluate_images([blob_image(0)] * 2, [blob_image(1)] * 2, ("xrv_fid", "inception_fid"), allow_random_weights=True)
