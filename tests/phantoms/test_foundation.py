"""The shipped phantom foundation does its job: the base model loads with plain diffusers, phantom-FID
separates real phantoms from base-model samples, and the calibrated memorisation gate (with the publish
guard behind it) catches a model that copies its training images while letting the demo's fine-tune through."""

from pathlib import Path

import pytest

from hf_cxr_diffusion.errors import UserError

pytestmark = pytest.mark.slow
PER_SET = 48


def _real(tmp: Path, name: str, seed: int, n: int) -> str:
    from hf_cxr_diffusion.data.preparation import prepare
    from hf_cxr_diffusion.phantoms.corpus import make_phantoms

    corpus = make_phantoms(tmp / f"{name}-corpus", layout="chexpert", n=n, seed=seed, resolution=64)
    return str(prepare(corpus="chexpert", data_dir=corpus, output_dir=tmp / name, resolution=64, template="findings").output_dir)


def _evaluate(real: str, synthetic: str, out: Path, metrics, **kwargs) -> dict:
    from hf_cxr_diffusion.metrics import evaluate_folders

    return evaluate_folders(real, synthetic, out, metrics, feature_model="phantom", batch_size=64, **kwargs)


def _plan(dataset: str, split: str, n: int):
    """The prompts (and labels) of the first ``n`` rows of ``dataset[split]``."""
    from hf_cxr_diffusion.data.labels import CHEXPERT_LABELS
    from hf_cxr_diffusion.data.loading import load_split
    from hf_cxr_diffusion.generation.prompts import PromptItem, PromptPlan

    rows = load_split(dataset, split)
    rows = rows.select(range(min(n, len(rows))))
    names = rows.features["labels"].feature.names
    return PromptPlan(tuple(PromptItem(r["prompt"], tuple(names[i] for i in r["labels"])) for r in rows), CHEXPERT_LABELS)


def test_shipped_base_loads_with_plain_diffusers_and_fits_the_budget():
    from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from hf_cxr_diffusion.models.loading import resolve_pretrained
    from hf_cxr_diffusion.phantoms.base import phantom_base_path, read_record

    folder = phantom_base_path()
    assert Path(resolve_pretrained("phantom-base")) == folder
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert isinstance(pipe.unet, UNet2DConditionModel) and pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert isinstance(pipe.vae, AutoencoderKL) and 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 8
    assert isinstance(pipe.text_encoder, CLIPTextModel) and pipe.tokenizer.vocab_size == 49408
    size = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
    assert size <= 25 * 2**20
    record = read_record()
    assert record["stages"]["vae"]["held_out_psnr_db"] > 24
    assert "cxr-diffusion pretrain-base" in record["command"]
    assert "not a medical model" in (folder / "README.md").read_text().lower()


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Two disjoint real phantom sets, base-model samples, and a VAE round trip of set A (a perfect copier)."""
    from hf_cxr_diffusion.generation import generate

    tmp = tmp_path_factory.mktemp("foundation")
    real_a, real_b = _real(tmp, "real-a", 11, 3 * PER_SET), _real(tmp, "real-b", 12, 3 * PER_SET // 2)
    plan = _plan(real_b, "train", PER_SET)
    base = tmp / "base-samples"
    generate("phantom-base", plan, base, scheduler="dpm", steps=20, guidance=4.0, batch_size=16, seed=0)
    return tmp, real_a, real_b, str(base)


def test_phantom_fid_of_two_real_sets_is_far_below_real_vs_base_samples(sets):
    tmp, real_a, real_b, base = sets
    real_real = _evaluate(real_a, real_b, tmp / "ev-real", ("fid",), split="train", synthetic_split="train")["phantom_fid"]["score"]
    real_base = _evaluate(real_a, base, tmp / "ev-base", ("fid",), split="train")["phantom_fid"]["score"]
    assert real_real * 3 < real_base, (real_real, real_base)


@pytest.fixture(scope="module")
def memorised(sets):
    """A deliberately memorising fine-tune: the full U-Net of phantom-base on ~8 images for 300 epochs."""
    from hf_cxr_diffusion.data.loading import load_split
    from hf_cxr_diffusion.generation import generate
    from hf_cxr_diffusion.training import TrainConfig, train

    tmp = sets[0]
    few = _real(tmp, "few", 21, 10)
    rows = load_split(few, "train")
    train(TrainConfig(pretrained_model="phantom-base", dataset=few, output_dir=str(tmp / "memoriser"), method="full",
                      method_config={"components": ["unet"]}, resolution=64, train_batch_size=len(rows),
                      max_train_steps=300, learning_rate=2e-4, lr_scheduler="constant", checkpointing_steps=0, seed=0))
    plan = _plan(few, "train", len(rows))
    out = tmp / "memorised-samples"
    generate("phantom-base", plan, out, adapter=str(tmp / "memoriser"), scheduler="dpm", steps=20, guidance=4.0, seed=0)
    return few, str(out)


def test_the_calibrated_gate_flags_a_memorising_fine_tune_and_the_publish_guard_refuses_it(sets, memorised, tmp_path):
    from hf_cxr_diffusion.hub import publish

    _, real_a, real_b, base = sets
    few, samples = memorised
    result = _evaluate(real_b, samples, tmp_path / "ev", ("memorisation",), split="train", training=few,
                       memorisation_space="pixels")
    memo = result["memorisation"]
    assert memo["threshold_method"] == "calibrated" and memo["space"] == "pixels 16x16"
    assert memo["n_flagged"] >= memo["n_synthetic"] // 2, memo
    with pytest.raises(UserError, match="exceed the memorisation threshold"):
        publish("dataset", samples, "org/memorised", license="cc-by-nc-4.0", export_dir=tmp_path / "export", dry_run=True,
                memorisation_report=Path(result["paths"]["json"]))
    # the base model, which never saw these images, is not flagged against them under the same calibration
    fresh = _evaluate(real_b, base, tmp_path / "ev-base", ("memorisation",), split="train", training=few,
                      memorisation_space="pixels")["memorisation"]
    assert fresh["n_flagged"] <= fresh["n_synthetic"] // 10, fresh
