import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline

from hf_cxr_diffusion.cli import main
from hf_cxr_diffusion.errors import MissingWeightsError, UserError
from hf_cxr_diffusion.models.loading import load_components, load_pipeline
from hf_cxr_diffusion.models.tiny import build_tiny_pipeline, make_tiny_model


def _sample(pipe, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return pipe("Chest X-ray of a subject with Cardiomegaly", num_inference_steps=3, generator=gen, output_type="np").images


def test_round_trip_is_bit_identical(tiny_model_dir, tmp_path):
    a = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    a.save_pretrained(tmp_path / "again")
    b = DiffusionPipeline.from_pretrained(tmp_path / "again")
    assert isinstance(b, StableDiffusionPipeline)
    out_a, out_b = _sample(a), _sample(b)
    assert out_a.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(out_a, out_b)
    assert not np.array_equal(out_a, _sample(a, seed=1))


def test_build_is_seeded():
    a, b, c = build_tiny_pipeline(seed=3), build_tiny_pipeline(seed=3), build_tiny_pipeline(seed=4)
    wa, wb, wc = (p.unet.conv_in.weight for p in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_loader_takes_folder_like_hub_id(tiny_model_dir):
    pipe = load_pipeline(str(tiny_model_dir))
    parts = load_components(tiny_model_dir)
    assert parts.vae_scale_factor == 8
    assert torch.equal(pipe.unet.conv_in.weight, parts.unet.conv_in.weight)
    assert parts.text_encoder.config.vocab_size == 49408


def test_missing_hub_model_says_where_to_put_it():
    with pytest.raises(MissingWeightsError, match="Hub cache"):
        load_pipeline("no-such-org/no-such-model")


def test_folder_without_model_index_is_rejected(tmp_path):
    with pytest.raises(UserError, match="model_index.json"):
        load_pipeline(tmp_path)


def test_bad_resolution_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="multiple of the VAE factor 8"):
        make_tiny_model(tmp_path / "m", resolution=60)


def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["make-tiny-model", str(tmp_path / "m"), "--resolution", "60"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "multiple of the VAE factor" in err[0] and "Traceback" not in err[0]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["make-tiny-model", str(blocker / "m")]) == 2
    assert "not a folder" in capsys.readouterr().err
