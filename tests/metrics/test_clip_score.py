"""CLIP score with a tiny random ``CLIPModel`` saved to disk and loaded back by path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from metrics_helpers import blob_image
from PIL import Image

from hf_cxr_diffusion.errors import MissingWeightsError
from hf_cxr_diffusion.metrics.clip_score import PROTOCOL_ID, CLIPScorer, clip_score

PROMPTS = ["chest x-ray, cardiomegaly", "chest x-ray, no finding, a long prompt " + "with more words " * 30]


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from hf_cxr_diffusion.models.tokenizer import cached_clip_tokenizer

    tokenizer = cached_clip_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "image_size": 32, "patch_size": 8,
        },
        projection_dim=8,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _images() -> list[Image.Image]:
    return [Image.fromarray(blob_image(seed, (40, 48))) for seed in (1, 2)]


def _direct_scores(folder: Path, images: list[Image.Image], prompts: list[str], dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Reference, one pair at a time: the model's projected embeddings, cosine, clipped at 0, times 100."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(folder, dtype=dtype).eval()
    processor, tokenizer = CLIPImageProcessor.from_pretrained(folder), CLIPTokenizer.from_pretrained(folder)
    scores = []
    for image, prompt in zip(images, prompts):
        pixels = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"].to(dtype)
        text = tokenizer([prompt], truncation=True, max_length=77, return_tensors="pt")
        with torch.no_grad():
            img = model.get_image_features(pixel_values=pixels)
            txt = model.get_text_features(**text)
        img, txt = (getattr(e, "pooler_output", e)[0].double() for e in (img, txt))
        scores.append(100 * max(float(img @ txt / (img.norm() * txt.norm())), 0.0))
    return np.array(scores)


@pytest.mark.parametrize(
    ("dtype", "batch_size", "atol"),
    [(torch.float32, 1, 1e-5), (torch.float64, 2, 1e-10)],  # float64: batching and padding change nothing
)
def test_clip_score_matches_direct_computation(tiny_clip_dir: Path, dtype: torch.dtype, batch_size: int, atol: float) -> None:
    images = _images()
    scorer = CLIPScorer(tiny_clip_dir, device="cpu", dtype=dtype, batch_size=batch_size)
    result = scorer(images, PROMPTS)
    expected = _direct_scores(tiny_clip_dir, images, PROMPTS, dtype)
    np.testing.assert_allclose(result["per_image"], expected, rtol=0, atol=atol)
    assert result["score"] == pytest.approx(expected.mean(), abs=atol)
    assert result["std"] == pytest.approx(expected.std(ddof=1), abs=atol)
    assert result["n"] == 2 and result["n_prompts_truncated"] == 1
    assert result["clip_model"] == str(tiny_clip_dir) and result["protocol"] == PROTOCOL_ID
    assert "Hessel" in result["protocol_note"]


def test_swapping_prompts_changes_per_image_scores(tiny_clip_dir: Path) -> None:
    scorer = CLIPScorer(tiny_clip_dir, device="cpu")
    images = _images()
    straight = np.array(scorer(images, PROMPTS)["per_image"])
    swapped = np.array(scorer(images, PROMPTS[::-1])["per_image"])
    assert not np.allclose(straight, swapped, atol=1e-3)
    np.testing.assert_allclose(swapped, _direct_scores(tiny_clip_dir, images, PROMPTS[::-1]), rtol=0, atol=1e-4)


def test_prompt_count_must_match_images(tiny_clip_dir: Path) -> None:
    scorer = CLIPScorer(tiny_clip_dir, device="cpu")
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer(_images(), PROMPTS[:1])
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer(_images()[:1], PROMPTS)


def test_missing_model_error_names_model_cache_and_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(MissingWeightsError) as info:
        CLIPScorer("someone/biomed-clip-not-cached", device="cpu")
    message = str(info.value)
    assert "someone/biomed-clip-not-cached" in message and str(cache) in message
    assert "hf download someone/biomed-clip-not-cached" in message


def test_incomplete_checkpoint_is_refused_not_randomly_completed(tiny_clip_dir: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken-clip"
    shutil.copytree(tiny_clip_dir, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["visual_projection.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MissingWeightsError, match="visual_projection"):
        CLIPScorer(broken, device="cpu")


def test_evaluate_images_clip_score_needs_no_xrv_weights(tiny_clip_dir: Path) -> None:
    from hf_cxr_diffusion.metrics import evaluate_images

    images = _images()
    result = evaluate_images(None, images, "clip_score", prompts_synthetic=PROMPTS, clip_model=tiny_clip_dir, device="cpu")
    direct = clip_score(images, PROMPTS, tiny_clip_dir, device="cpu")
    assert result["clip_score"] == direct and (result["n_synthetic"], result["n_real"]) == (2, 0)
    with pytest.raises(ValueError, match="prompts_synthetic"):
        evaluate_images(None, images, "clip_score", clip_model=tiny_clip_dir)
    with pytest.raises(ValueError, match="clip_model"):
        evaluate_images(None, images, "clip_score", prompts_synthetic=PROMPTS)
    with pytest.raises(ValueError, match="one prompt per image"):
        evaluate_images(None, images, "clip_score", prompts_synthetic=PROMPTS[:1], clip_model=tiny_clip_dir)


def test_evaluate_images_clip_score_alongside_xrv_fid(tiny_clip_dir: Path) -> None:
    from metrics_helpers import SMALL

    from hf_cxr_diffusion.metrics import evaluate_images

    images, real = _images(), [blob_image(s) for s in (3, 4)]
    options = dict(prompts_synthetic=PROMPTS, clip_model=tiny_clip_dir, device="cpu", allow_random_weights=True, protocol=SMALL)
    result = evaluate_images(real, images, ("xrv_fid", "clip_score"), **options)
    assert result["clip_score"] == clip_score(images, PROMPTS, tiny_clip_dir, device="cpu")
    assert result["xrv_fid"]["score"] is not None and (result["n_real"], result["n_synthetic"]) == (2, 2)
    with pytest.raises(ValueError, match="sequence"):  # a one-shot iterator cannot be read twice
        evaluate_images(real, iter(images), ("xrv_fid", "clip_score"), **options)


def test_evaluate_cli_clip_score(tiny_clip_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import datasets
    from metrics_helpers import write_dataset_folder

    from hf_cxr_diffusion.artefacts import read_report
    from hf_cxr_diffusion.cli import main

    names = ["Effusion", "No Finding"]
    real = write_dataset_folder(tmp_path / "real", "test", [blob_image(s) for s in (3, 4)], [[0], [1]], names)
    syn = write_dataset_folder(tmp_path / "syn", "train", [blob_image(s) for s in (1, 2)], [[0], [1]], names)
    out = tmp_path / "eval" / "report.json"  # outside the input folders (io.check_output_location)
    base = ["evaluate", "--real", str(real), "--synthetic", str(syn), "--out", str(out)]
    assert main([*base, "--metrics", "clip_score", "--clip-model", str(tiny_clip_dir)]) == 0  # no xrv weights needed
    report = read_report(out)
    syn_ds = datasets.load_dataset(str(syn))["train"]
    direct = clip_score(list(syn_ds["image"]), list(syn_ds["prompt"]), tiny_clip_dir, device="cpu")
    clip = report.metrics["clip_score"]
    np.testing.assert_allclose(clip.details["per_image"], direct["per_image"], rtol=0, atol=1e-5)
    assert clip.value == clip.details["score"] and clip.higher_is_better
    assert report.context["n_synthetic"] == 2 and clip.weights == str(tiny_clip_dir)
    assert "CLIP score" in out.with_suffix(".md").read_text()
    other = ["--out", str(tmp_path / "eval2" / "report.json")]  # the first folder holds the other clip model's report
    assert main([*base, *other, "--metrics", "clip_score", "--clip-model", "nobody/missing-clip"]) == 2
    assert "hf download nobody/missing-clip" in capsys.readouterr().err.strip().splitlines()[-1]
