"""Memorisation: an exact copy of a training image scores ~1 and is flagged; the pair grid is written."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_helpers import SMALL, blob_image
from PIL import Image

from hf_cxr_diffusion.metrics import XRVFeatureExtractor, memorisation, nearest_training_neighbours, save_pair_grid


def test_nearest_neighbour_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    train, syn = rng.normal(size=(50, 16)) + 2, rng.normal(size=(9, 16)) + 2
    sims, idx = nearest_training_neighbours(train, syn, center=False)
    cos = (syn / np.linalg.norm(syn, axis=1, keepdims=True)) @ (train / np.linalg.norm(train, axis=1, keepdims=True)).T
    np.testing.assert_allclose(sims, cos.max(1), rtol=1e-12)
    np.testing.assert_array_equal(idx, cos.argmax(1))


def test_exact_copy_is_flagged_and_grid_written(tmp_path) -> None:
    training = [blob_image(s) for s in range(6)]
    synthetic = [blob_image(100 + s) for s in range(3)] + [training[4].copy()]  # index 3 copies training #4
    extractor = XRVFeatureExtractor(allow_random_weights=True, protocol=SMALL, batch_size=16)
    feats = extractor.features(training + synthetic)
    report = memorisation(feats[:6], feats[6:], threshold=0.99, top_k=2)
    top = report["top_pairs"][0]
    assert (top["synthetic_index"], top["training_index"]) == (3, 4)
    assert top["similarity"] == pytest.approx(1.0, abs=1e-6)
    assert 3 in report["flagged_synthetic_indices"] and report["n_flagged"] >= 1
    assert report["fraction_above_threshold"] == report["n_flagged"] / 4
    assert report["similarity"]["max"] <= 1.0 + 1e-9
    with Image.open(save_pair_grid(report["top_pairs"], training, synthetic, tmp_path / "pairs.png")) as grid:
        assert grid.format == "PNG" and np.asarray(grid.convert("L")).std() > 0


def test_pixel_space_rows_are_channel_means_box_downsampled() -> None:
    import torch

    from hf_cxr_diffusion.metrics.memorisation import PIXEL_SIDE, pixel_rows

    pixels = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    rows = pixel_rows(pixels)
    assert rows.shape == (3, PIXEL_SIDE * PIXEL_SIDE)
    expected = pixels.mean(1).reshape(3, PIXEL_SIDE, 4, PIXEL_SIDE, 4).mean((2, 4)).reshape(3, -1).numpy()
    np.testing.assert_allclose(rows, expected, rtol=1e-5)


def test_pixel_space_needs_inputs_and_a_known_space() -> None:
    import torch

    from hf_cxr_diffusion.errors import UserError
    from hf_cxr_diffusion.metrics.base import Batch, Context
    from hf_cxr_diffusion.metrics.memorisation import Memorisation

    context = Context(feature_dim=8, protocol="phantom-fid-v1", feature_model="phantom")
    with pytest.raises(UserError, match="not one of features, pixels"):
        Memorisation(context, space="latents")
    metric = Memorisation(context, threshold=0.9, space="pixels")
    with pytest.raises(UserError, match="model inputs"):
        metric.update(Batch("training", torch.zeros(2, 8)))
    metric.close()
