"""Prompts-only publishing and joining the user's own images back (issue 18): no pixel leaves, rows come back."""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets
import pytest
from huggingface_hub import DatasetCard

from hf_cxr_diffusion import attach_images
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hub import export
from hf_cxr_diffusion.hub.files import list_files

REPO = "cxr-lab/chexpert_prompts"


@pytest.fixture(scope="module")
def chexpert_phantoms(tmp_path_factory) -> tuple[Path, Path]:
    """A phantom CheXpert-layout corpus and its `prepare` output (images and prompts configs)."""
    from hf_cxr_diffusion.data.preparation import prepare
    from hf_cxr_diffusion.phantoms.corpus import make_phantoms

    root = tmp_path_factory.mktemp("chexpert-phantoms")
    corpus = make_phantoms(root / "corpus", layout="chexpert", n=16, seed=0, resolution=64)
    prepared = prepare(corpus="chexpert", data_dir=corpus, output_dir=root / "prepared", resolution=64).output_dir
    return corpus, prepared


def _load(folder: Path):
    return datasets.load_dataset(str(folder), cache_dir=str(folder.parent / "hf-cache"))


def test_prompts_only_export_holds_no_pixels_and_joins_back(chexpert_phantoms, tmp_path):
    corpus, prepared = chexpert_phantoms
    out = export("dataset", prepared, tmp_path / "export", repo_id=REPO, license="other", private=False,
                 prompts_only=True)  # public, no rights flag: nothing but text leaves
    files = list_files(out)
    assert all(f.startswith("prompts/") for f in files if f.endswith(".parquet")) and "prepare_info.json" in files
    card = DatasetCard.load(out / "README.md")
    assert "prompts-only" in card.data.tags and "**This repository holds no images**" in card.text
    assert "Stanford CheXpert" not in card.text  # phantoms: the phantom note, not CheXpert's terms
    loaded = _load(out)
    assert "image" not in loaded["train"].column_names
    attached = attach_images(loaded, corpus)
    assert attached.skipped == ()
    for split, ds in attached.dataset.items():
        assert len(ds) == len(loaded[split])
    row = attached.dataset["train"][0]
    assert row["image"].size[0] > 0 and row["prompt"] == loaded["train"][0]["prompt"]


def test_missing_and_escaping_images(chexpert_phantoms, tmp_path):
    corpus, prepared = chexpert_phantoms
    prompts = datasets.load_dataset(str(prepared), "prompts", cache_dir=str(tmp_path / "hf-cache"))["train"]
    copy = Path(shutil.copytree(corpus, tmp_path / "corpus"))
    (copy / prompts[1]["source_path"]).unlink()
    with pytest.raises(UserError, match=rf"1 of {len(prompts)} image\(s\) of split 'train' are missing .*on_missing='skip'"):
        attach_images(prompts, copy)
    attached = attach_images(prompts, copy, on_missing="skip")
    assert len(attached.dataset) == len(prompts) - 1
    assert attached.skipped == ({"split": "train", "source_path": prompts[1]["source_path"], "reason": "missing"},)
    escaping = prompts.select([0]).map(lambda r: {"source_path": "../" + r["source_path"]})
    with pytest.raises(UserError, match="escapes the data folder"):
        attach_images(escaping, copy)


def test_prompts_only_refuses_image_columns(chexpert_phantoms, tmp_path):
    _, prepared = chexpert_phantoms
    src = Path(shutil.copytree(prepared, tmp_path / "prepared"))
    shutil.rmtree(src / "prompts")  # left with data/: shards that carry the images
    with pytest.raises(UserError, match=r"column 'image' can hold image bytes"):
        export("dataset", src, tmp_path / "export", repo_id=REPO, license="other", prompts_only=True)
    assert not (tmp_path / "export").exists()


def test_train_and_evaluate_from_a_prompts_only_export(chexpert_phantoms, tiny_model_dir, tmp_path):
    """The round trip of issue 18: published prompts + the user's images -> `train --data-dir` and `evaluate --data-dir`."""
    from artefact_makers import evaluate_cli, generate_tiny, train_tiny

    from hf_cxr_diffusion.artefacts import read_report

    corpus, prepared = chexpert_phantoms
    published = export("dataset", prepared, tmp_path / "published", repo_id=REPO, license="other", prompts_only=True)
    with pytest.raises(UserError, match="image"):  # without the images there is nothing to train on
        train_tiny(tiny_model_dir, published, tmp_path / "no-images", "lora", {})
    run = train_tiny(tiny_model_dir, published, tmp_path / "lora", "lora", {}, data_dir=str(corpus))
    assert run.global_step == 2 and run.summary["num_train_images"] == len(_load(published)["train"])
    synthetic = generate_tiny(tiny_model_dir, tmp_path / "synthetic", ["Chest X-ray of a subject with Cardiomegaly"] * 2)
    split = "test" if "test" in _load(published) else "validation"
    report = evaluate_cli(published, synthetic, tmp_path / "evaluation", "vendi", "--allow-random-weights",
                          "--data-dir", str(corpus), "--split", split)
    assert read_report(report).metrics["vendi"].value is not None
