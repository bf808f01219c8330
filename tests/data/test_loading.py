"""The one dataset-loading helper: local folders (never another folder's cached rows), configs, splits, errors."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from hf_cxr_diffusion.artefacts import CARD_FILE
from hf_cxr_diffusion.data.loading import load_dataset_dict, load_split
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.generation.writer import image_path, save_png, write_dataset

LABELS = ["Effusion", "Pneumonia"]


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty datasets cache, so earlier tests' cached folders cannot hide the behaviour under test."""
    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    return cache


def synthetic_folder(out: Path, grey: int, n: int = 3) -> Path:
    """A synthetic dataset folder made by the generation writer, every image filled with ``grey``."""
    records = []
    for i in range(n):
        record = {"index": i, "prompt": f"prompt {i}", "labels": [LABELS[i % 2]], "seed": i, "scheduler": "ddim",
                  "steps": 2, "guidance": 1.0, "negative_prompt": "", "base_model": "tiny", "adapter": "",
                  "adapter_sha256": "", "synthetic": True}
        save_png(Image.fromarray(np.full((8, 8), grey, np.uint8)), image_path(out, i), record)
        records.append(record)
    (out / "images").mkdir(exist_ok=True)
    write_dataset(out, records, {"label_names": LABELS})
    return out


def test_two_folders_with_the_same_name_and_card_give_their_own_rows(tmp_path, fresh_cache):
    """datasets keys a local folder's cache by base name + card: folder b used to come back with a's rows."""
    a = synthetic_folder(tmp_path / "run_a" / "synthetic", grey=10)
    b = synthetic_folder(tmp_path / "run_b" / "synthetic", grey=200)
    assert (a / CARD_FILE).read_text() == (b / CARD_FILE).read_text()  # identical cards: the trap
    assert np.asarray(load_split(a, "train")[0]["image"]).max() == 10
    assert np.asarray(load_split(b, "train")[0]["image"]).max() == 200
    assert np.asarray(load_dataset_dict(str(b))["train"][2]["image"]).max() == 200


def test_a_folder_rewritten_in_place_is_read_again_and_an_unchanged_one_from_cache(tmp_path, fresh_cache):
    out = synthetic_folder(tmp_path / "synthetic", grey=10)
    first = load_split(out, "train")
    again = load_split(out, "train")
    assert again.cache_files == first.cache_files  # unchanged folder: the Arrow cache is reused
    synthetic_folder(out, grey=99)
    assert np.asarray(load_split(out, "train")[0]["image"]).max() == 99


def test_configs_splits_and_limit(tmp_path, fresh_cache):
    from hf_cxr_diffusion.data.preparation import prepare
    from hf_cxr_diffusion.phantoms.corpus import make_phantoms

    corpus = make_phantoms(tmp_path / "corpus", "pneumonia", n=12, seed=0, resolution=32)
    out = prepare(corpus="pneumonia", data_dir=corpus, output_dir=tmp_path / "prepared", resolution=16).output_dir
    reference = datasets.load_dataset(str(out), "prompts", cache_dir=str(tmp_path / "ref-cache"))
    prompts = load_dataset_dict(out, "prompts")
    assert sorted(prompts) == sorted(reference) and "image" not in prompts["train"].column_names
    for split in reference:
        assert prompts[split].to_pandas().equals(reference[split].to_pandas())
    assert prompts["train"].features == reference["train"].features  # ClassLabel names kept
    assert len(load_split(out, "test", limit=1)) == 1
    with pytest.raises(UserError, match=r"has splits \['train', 'validation', 'test'\]; choose one"):
        load_split(out)
    with pytest.raises(UserError, match=r"has no split 'valid' \(splits present: \['train', 'validation', 'test'\]\)"):
        load_split(out, "valid")
    assert len(load_split(synthetic_folder(tmp_path / "syn", grey=5))) == 3  # the only split


def test_unloadable_sources_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"cannot load dataset 'someone/not-cached' .*hub id present in the local cache"):
        load_split("someone/not-cached", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"cannot load dataset .*empty"):
        load_dataset_dict(tmp_path / "empty")
