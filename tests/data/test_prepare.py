"""prepare -> Hub-ready folder -> load_dataset round trips for every layout, determinism, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datasets import load_dataset

from hf_cxr_diffusion import runs
from hf_cxr_diffusion.artefacts import CARD_FILE, PREPARE_INFO_FILE, SKIPPED_FILE
from hf_cxr_diffusion.cli import main
from hf_cxr_diffusion.data.preparation import prepare, prepare_dataset, prepare_iterable, save_dataset_folder
from hf_cxr_diffusion.data.splits import shared_patients
from hf_cxr_diffusion.errors import UserError

RES = 32
LAYOUTS = {  # corpus, fixture, extra options
    "chexpert": ("chexpert", "chexpert_dir", {}),
    "nih": ("nih", "nih_dir", {}),
    "iu_xray": ("iu_xray", "iu_dir", {}),
    "montgomery": ("montgomery", "montgomery_dir", {"split_fractions": (0.5, 0.0, 0.5)}),
    "pneumonia": ("pneumonia", "pneumonia_dir", {}),
    "mimic": ("mimic", "mimic_dir", {"views": "all"}),
    "folder_txt": ("folder", "folder_sidecar_dir", {}),
    "folder_csv": ("folder", "folder_metadata_dir", {}),
    "folder_jsonl": ("folder", "folder_jsonl_dir", {}),
    "folder_classes": ("folder", "folder_classes_dir", {}),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_round_trip_every_layout(layout, request, tmp_path, tokenizer):
    corpus, fixture, extra = LAYOUTS[layout]
    data_dir = request.getfixturevalue(fixture)
    out = prepare(corpus=corpus, data_dir=data_dir, output_dir=tmp_path / "out", resolution=RES, tokenizer=tokenizer, **extra).output_dir
    info = json.loads((out / PREPARE_INFO_FILE).read_text())
    ds = load_dataset(str(out))
    assert {s: len(d) for s, d in ds.items()} == info["num_rows"]
    names = ds[next(iter(ds))].features["labels"].feature.names
    assert names == info["label_names"]
    for split, d in ds.items():
        assert set(d["split"]) == {split} and set(d["corpus"]) == {corpus}
        assert all(img.size == (RES, RES) and img.mode == "L" for img in d["image"])
        counts = np.zeros(len(names), int)
        for ids in d["labels"]:
            counts[ids] += 1
        assert dict(zip(names, counts.tolist())) == info["label_counts"][split]
    all_rows = pd.concat([d.select_columns(["patient_id", "split"]).to_pandas() for d in ds.values()])
    if layout != "pneumonia":  # Kermany's official val/test folders are kept as published
        assert shared_patients(all_rows["patient_id"], all_rows["split"]) == []
    prompts = load_dataset(str(out), "prompts")
    assert "image" not in prompts[next(iter(prompts))].column_names
    for split in ds:
        assert prompts[split]["prompt"] == ds[split]["prompt"]
    streamed = load_dataset(str(out), streaming=True)
    first_split = next(iter(ds))
    example = next(iter(streamed[first_split]))
    assert example["prompt"] == ds[first_split][0]["prompt"] and example["image"].size == (RES, RES)
    card = (out / CARD_FILE).read_text()
    assert card.startswith("---\nconfigs:") and "config_name: prompts" in card and "Licence and data use" in card


def test_parquet_is_byte_identical_across_runs_and_num_proc(chexpert_dir, tmp_path, tokenizer):
    a = prepare(corpus="chexpert", data_dir=chexpert_dir, output_dir=tmp_path / "a", resolution=RES, max_shard_rows=16, tokenizer=tokenizer).output_dir
    b = prepare(corpus="chexpert", data_dir=chexpert_dir, output_dir=tmp_path / "b", resolution=RES, max_shard_rows=16, num_proc=2, tokenizer=tokenizer).output_dir
    assert Path("data/train-00000-of-00003.parquet") in assert_same_dataset_files(a, b)


def assert_same_dataset_files(a: Path, b: Path) -> list[Path]:
    """Every file of two prepared folders but the run record (who wrote the folder, when: cxr_run.json) is equal."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != runs.RUN_FILE)
    assert len(files) > 5 and files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != runs.RUN_FILE)
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    return files


def test_two_processes_skip_and_stop_on_a_corrupt_image_like_one(chexpert_dir, tmp_path, tokenizer):
    """The pool encodes the next shard while this one is written: a bad image in a later shard is still skipped in
    order (same files as one process) or stops the run naming it, leaving no folder."""
    victim = sorted((chexpert_dir / "CheXpert-v1.0-small" / "train").rglob("view1_frontal.jpg"))[-1]
    victim.write_bytes(victim.read_bytes()[:100])
    common = dict(corpus="chexpert", data_dir=chexpert_dir, resolution=RES, max_shard_rows=16, tokenizer=tokenizer)
    a = prepare(output_dir=tmp_path / "a", on_missing="skip", **common).output_dir
    b = prepare(output_dir=tmp_path / "b", on_missing="skip", num_proc=2, **common).output_dir
    assert victim.relative_to(chexpert_dir).as_posix() in (b / SKIPPED_FILE).read_text()
    assert_same_dataset_files(a, b)
    with pytest.raises(UserError, match=rf"{victim.name} \(unreadable image"):
        prepare(output_dir=tmp_path / "c", num_proc=2, **common)
    assert not (tmp_path / "c").exists()


def test_png_compress_level_and_filter_default_to_pillow_level_1_and_other_choices_keep_the_pixels(chexpert_dir, tmp_path, tokenizer):
    """Default bytes are Pillow's compress_level=1 encoding of the decoded image (unchanged parquet); other levels and
    ``--png-filter sub`` are lossless."""
    import io

    from PIL import Image

    from hf_cxr_diffusion.data.images import load_cxr

    def images(level: int | None, png_filter: str | None = None) -> tuple[list[str], list[bytes]]:
        extra = {} if level is None else {"png_compress_level": level}
        extra.update({} if png_filter is None else {"png_filter": png_filter})
        out = prepare(corpus="chexpert", data_dir=chexpert_dir, output_dir=tmp_path / f"l{level}{png_filter}",
                      resolution=RES, tokenizer=tokenizer, **extra).output_dir
        info = json.loads((out / PREPARE_INFO_FILE).read_text())
        assert info["png_compress_level"] == (1 if level is None else level)
        assert info["png_filter"] == (png_filter or "adaptive")
        rows = pd.concat(pd.read_parquet(p) for p in sorted((out / "data").glob("*.parquet")))
        return rows["source_path"].tolist(), [img["bytes"] for img in rows["image"]]

    paths, default = images(None)
    for path, png in zip(paths, default):
        reference = io.BytesIO()
        load_cxr(chexpert_dir / path, RES).save(reference, format="PNG", compress_level=1)
        assert png == reference.getvalue(), path
    for level, png_filter in ((0, None), (6, None), (1, "sub"), (6, "sub")):
        same_paths, fast = images(level, png_filter)
        assert same_paths == paths and fast != default  # the option reaches the encoder
        for a, b in zip(fast, default):
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(a))), np.asarray(Image.open(io.BytesIO(b))))
    with pytest.raises(UserError, match=r"--png-compress-level must be a whole number from 0 to 9, got 10"):
        prepare(corpus="chexpert", data_dir=chexpert_dir, output_dir=tmp_path / "bad", png_compress_level=10)
    with pytest.raises(UserError, match=r"--png-filter 'paeth' is not one of adaptive, sub"):
        prepare(corpus="chexpert", data_dir=chexpert_dir, output_dir=tmp_path / "bad", png_filter="paeth")


def test_prepare_dataset_in_memory_then_save(chexpert_dir, tmp_path, tokenizer):
    prepared = prepare_dataset(corpus="chexpert", data_dir=chexpert_dir, resolution=RES, uncertain="ignore", tokenizer=tokenizer)
    dsd = prepared.dataset
    assert prepared.output_dir is None and prepared.info["num_rows"] == {s: len(d) for s, d in dsd.items()}
    assert [p.name for p in tmp_path.iterdir()] == ["chexpert"]  # nothing written besides the corpus fixture
    assert dsd["train"][0]["image"].size == (RES, RES)
    assert any(dsd["train"]["uncertain"])  # U-Ignore keeps the masks
    out = save_dataset_folder(prepared, tmp_path / "saved", max_shard_rows=10).output_dir
    reloaded = load_dataset(str(out))
    assert reloaded["train"]["prompt"] == dsd["train"]["prompt"]
    assert reloaded["train"]["uncertain"] == dsd["train"]["uncertain"]


def test_prompts_only_needs_no_images(chexpert_full_dir, tmp_path, tokenizer):
    out = prepare(corpus="chexpert", data_dir=chexpert_full_dir, output_dir=tmp_path / "p", images=False, limit=500, tokenizer=tokenizer).output_dir
    ds = load_dataset(str(out), "prompts")
    assert sum(len(d) for d in ds.values()) == 500 and "image" not in ds["train"].column_names


def test_iterable_dataset(nih_dir, iu_dir, tokenizer):
    streams = prepare_iterable(corpus="nih", data_dir=nih_dir, resolution=RES, tokenizer=tokenizer).dataset
    examples = list(streams["train"])
    assert examples and all(e["image"].size == (RES, RES) for e in examples)
    assert examples[0]["prompt"] == "Chest X-ray of a subject with Cardiomegaly" and examples[0]["age"] == 57
    iu = next(iter(prepare_iterable(corpus="iu_xray", data_dir=iu_dir, resolution=RES, tokenizer=tokenizer).dataset["train"]))
    assert iu["age"] is None and iu["sex"] == "" and iu["image"].size == (RES, RES)


# ---- bad input ---------------------------------------------------------------------------------

def _rewrite_csv(data_dir: Path, fn) -> Path:
    csv_path = data_dir / "CheXpert-v1.0-small" / "train.csv"
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    fn(frame)
    frame.to_csv(csv_path, index=False)
    return csv_path


def test_missing_images_error_lists_paths_then_skip_records_them(chexpert_dir, tmp_path, tokenizer):
    gone = sorted((chexpert_dir / "CheXpert-v1.0-small" / "train").rglob("*.jpg"))[:3]
    for p in gone:
        p.unlink()
    with pytest.raises(UserError, match=r"3 image\(s\) listed by the corpus are missing or unreadable, first: .*patient.*"
                                         r"--on-missing skip"):
        prepare(corpus="chexpert", data_dir=chexpert_dir, output_dir=tmp_path / "o", resolution=RES, views="all", tokenizer=tokenizer)
    assert not (tmp_path / "o").exists()
    out = prepare(corpus="chexpert", data_dir=chexpert_dir, output_dir=tmp_path / "o", resolution=RES, views="all", on_missing="skip", tokenizer=tokenizer).output_dir
    skipped = list(csv.DictReader((out / SKIPPED_FILE).open()))
    assert sorted(r["source_path"] for r in skipped) == sorted(p.relative_to(chexpert_dir).as_posix() for p in gone)
    assert {r["reason"] for r in skipped} == {"missing"}
    assert json.loads((out / PREPARE_INFO_FILE).read_text())["skipped"] == 3
    assert "**3 image(s) listed by the corpus were skipped**" in (out / CARD_FILE).read_text()


def test_corrupt_image_is_named_and_skippable(chexpert_dir, tmp_path, tokenizer):
    victim = sorted((chexpert_dir / "CheXpert-v1.0-small" / "train").rglob("view1_frontal.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(UserError, match=rf"{victim.name} \(unreadable image"):
        prepare(corpus="chexpert", data_dir=chexpert_dir, output_dir=tmp_path / "o", resolution=RES, tokenizer=tokenizer)
    out = prepare(corpus="chexpert", data_dir=chexpert_dir, output_dir=tmp_path / "o", resolution=RES, on_missing="skip", tokenizer=tokenizer).output_dir
    (row,) = list(csv.DictReader((out / SKIPPED_FILE).open()))
    assert row["reason"].startswith("unreadable image") and row["source_path"].endswith(victim.relative_to(chexpert_dir).as_posix())


@pytest.mark.parametrize("bad_path", ["../../etc/passwd.jpg", "/etc/passwd.jpg"])
def test_paths_escaping_the_data_dir_are_rejected(chexpert_dir, tmp_path, tokenizer, bad_path):
    csv_path = _rewrite_csv(chexpert_dir, lambda f: f.__setitem__("Path", f["Path"].where(f.index != 4, bad_path)))
    with pytest.raises(UserError, match=rf"{csv_path} line 6: image path '{bad_path}' is absolute or escapes the data folder"):
        prepare(corpus="chexpert", data_dir=chexpert_dir, output_dir=tmp_path / "o", resolution=RES, views="all", tokenizer=tokenizer)


def test_label_value_outside_the_allowed_set(chexpert_dir, tmp_path, tokenizer):
    csv_path = _rewrite_csv(chexpert_dir, lambda f: f.__setitem__("Edema", f["Edema"].where(f.index != 7, "2.0")))
    with pytest.raises(UserError, match=rf"{csv_path} line 9 column 'Edema': label value '2.0' is not one of 1, 0, -1 or blank"):
        prepare(corpus="chexpert", data_dir=chexpert_dir, output_dir=tmp_path / "o", resolution=RES, tokenizer=tokenizer)


def test_unknown_corpus_template_field_and_empty_filters(montgomery_dir, tmp_path, tokenizer):
    with pytest.raises(UserError, match="unknown corpus 'chexpert2'"):
        prepare(corpus="chexpert2", data_dir=montgomery_dir, output_dir=tmp_path / "o")
    with pytest.raises(UserError, match=r"unknown field \{diagnosis\}; valid fields are"):
        prepare(corpus="montgomery", data_dir=montgomery_dir, output_dir=tmp_path / "o", template="CXR with {diagnosis}")
    with pytest.raises(UserError, match=r"no rows left after --views lateral \(views in the corpus: \{'frontal': 6\}\)"):
        prepare(corpus="montgomery", data_dir=montgomery_dir, output_dir=tmp_path / "o", views=("lateral",), tokenizer=tokenizer)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="is not empty; choose an empty --output-dir or pass --overwrite"):
        prepare(corpus="montgomery", data_dir=montgomery_dir, output_dir=tmp_path / "full", resolution=RES, tokenizer=tokenizer)


def test_cli_prepare(pneumonia_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["prepare", "--corpus", "pneumonia", "--data-dir", str(pneumonia_dir), "--output-dir", str(out),
                 "--resolution", str(RES), "--template", "class", "--limit", "5"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert sum(json.loads((out / PREPARE_INFO_FILE).read_text())["num_rows"].values()) == 5
    assert main(["prepare", "--corpus", "pneumonia", "--data-dir", str(pneumonia_dir), "--output-dir", str(tmp_path / "x"),
                 "--template", "{nope}"]) == 2
    assert "unknown field {nope}" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["chexpert", "nih", "pneumonia"])
def test_phantom_corpora_prepare(layout, tmp_path, tokenizer):
    """The demo path: the phantoms helper writes a corpus in the real layout, prepare reads it."""
    from hf_cxr_diffusion.phantoms.corpus import make_phantoms

    corpus_dir = make_phantoms(tmp_path / "corpus", layout, n=12, seed=0, resolution=64)
    out = prepare(corpus=layout, data_dir=corpus_dir, output_dir=tmp_path / "prepared", resolution=64, tokenizer=tokenizer).output_dir
    ds = load_dataset(str(out))
    assert sum(len(d) for d in ds.values()) == 12
    assert all(img.size == (64, 64) for d in ds.values() for img in d["image"])


def test_dataset_scripts_cover_every_corpus():
    import ast

    from hf_cxr_diffusion.data.corpora import CORPORA

    scripts = Path(__file__).resolve().parents[2] / "dataset_scripts"
    for corpus in CORPORA:
        tree = ast.parse((scripts / f"{corpus}.py").read_text())
        doc = ast.get_docstring(tree)
        assert doc and "--data-dir" in doc and "--output-dir" in doc, corpus
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "run"]
        assert calls and calls[0].args[0].value == corpus
