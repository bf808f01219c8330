"""Input and output safety of prepare (issue 13): inputs are never deleted, --overwrite replaces only its own kind."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hf_cxr_diffusion.artefacts import CARD_FILE, PREPARE_INFO_FILE, SKIPPED_FILE
from hf_cxr_diffusion.cli import main
from hf_cxr_diffusion.data.preparation import prepare
from hf_cxr_diffusion.errors import UserError

RES = 16


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["equal", "above", "inside"])
def test_overwrite_never_deletes_the_corpus(pneumonia_dir, tmp_path, tokenizer, where):
    """On the old main, ``--out`` equal to or above ``--data-dir`` with ``--overwrite`` deleted the corpus."""
    before = _files(pneumonia_dir)
    out = {"equal": pneumonia_dir, "above": pneumonia_dir.parent, "inside": pneumonia_dir / "chest_xray" / "prepared"}[where]
    relation = {"equal": "equal to", "above": "above", "inside": "inside"}[where]
    with pytest.raises(UserError, match=rf"--output-dir {out} is {relation} the input --data-dir {pneumonia_dir}"):
        prepare(corpus="pneumonia", data_dir=pneumonia_dir, output_dir=out, resolution=RES, overwrite=True, tokenizer=tokenizer)
    assert _files(pneumonia_dir) == before


def test_overwrite_replaces_a_prepared_dataset_and_nothing_else(pneumonia_dir, tmp_path, tokenizer):
    out = prepare(corpus="pneumonia", data_dir=pneumonia_dir, output_dir=tmp_path / "prepared", resolution=RES, tokenizer=tokenizer).output_dir
    prepare(corpus="pneumonia", data_dir=pneumonia_dir, output_dir=out, resolution=RES, limit=4, overwrite=True, tokenizer=tokenizer)
    assert sum(json.loads((out / PREPARE_INFO_FILE).read_text())["num_rows"].values()) == 4
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(UserError, match=r"holds 1 entry that is not a prepared dataset \(notes.txt\)"):
        prepare(corpus="pneumonia", data_dir=pneumonia_dir, output_dir=out, resolution=RES, overwrite=True, tokenizer=tokenizer)
    assert (out / "notes.txt").read_text() == "my notes" and (out / PREPARE_INFO_FILE).exists()
    other = tmp_path / "synthetic"
    (other / "data").mkdir(parents=True)
    (other / CARD_FILE).write_text("a synthetic dataset card")
    with pytest.raises(UserError, match=r"is not a prepared dataset \(no prepare_info.json\); --overwrite only replaces"):
        prepare(corpus="pneumonia", data_dir=pneumonia_dir, output_dir=other, resolution=RES, overwrite=True, tokenizer=tokenizer)
    assert (other / CARD_FILE).read_text() == "a synthetic dataset card"


def test_cli_output_dir_is_checked_and_out_is_a_deprecated_alias(pneumonia_dir, tmp_path, monkeypatch, capsys, caplog):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    base = ["prepare", "--corpus", "pneumonia", "--data-dir", str(pneumonia_dir), "--resolution", str(RES), "--limit", "3"]
    assert main([*base, "--output-dir", "."]) == 2
    assert "--output-dir . is the current folder or above it" in capsys.readouterr().err
    assert main([*base, "--out", "old-flag"]) == 0
    assert "--out is deprecated" in caplog.text and (tmp_path / "work" / "old-flag" / PREPARE_INFO_FILE).exists()


# ---- containment: every image path from user metadata stays inside --data-dir -------------------

def _png(path: Path, grey: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 48), grey, np.uint8)).save(path)


def _folder_with_metadata(root: Path, file_names: list[str]) -> Path:
    """A folder corpus: three blank images under img/ and a metadata.csv listing ``file_names``."""
    for i in range(3):
        _png(root / "img" / f"{i}.png", grey=50 * i)
    lines = ["file_name,text"] + [f"{name},caption {i}" for i, name in enumerate(file_names)]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("route", ["abs-root-dotdot", "dotdot", "absolute", "symlink-file", "symlink-dir"])
def test_every_escape_route_is_refused(tmp_path, tokenizer, route):
    """On the old main ``<abs root>/../x.png`` and symlinks out of the data folder were read."""
    outside = tmp_path / "outside"
    _png(outside / "secret.png")
    root = tmp_path / "corpus"
    name = {"abs-root-dotdot": f"{root.resolve()}/../outside/secret.png", "dotdot": "img/../../outside/secret.png",
            "absolute": str(outside / "secret.png"), "symlink-file": "img/link.png",
            "symlink-dir": "linked/secret.png"}[route]
    _folder_with_metadata(root, ["img/0.png", "img/1.png", name])
    (root / "img" / "link.png").symlink_to(outside / "secret.png")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    expected = ("resolves through a symlink to .*outside/secret.png, outside the data folder" if route.startswith("symlink")
                else "is absolute or escapes the data folder")
    with pytest.raises(UserError, match=rf"metadata.csv line 4: image path .*{expected}"):
        prepare(corpus="folder", data_dir=root, output_dir=tmp_path / "out", resolution=RES, on_missing="skip",
                tokenizer=tokenizer)
    assert not (tmp_path / "out").exists()


def test_symlinks_inside_the_data_folder_are_fine_and_prompts_only_reads_no_file(tmp_path, tokenizer):
    root = _folder_with_metadata(tmp_path / "corpus", ["img/0.png", "img/alias.png", "img/../img/2.png"])
    (root / "img" / "alias.png").symlink_to(root / "img" / "1.png")
    prepared = prepare(corpus="folder", data_dir=root, output_dir=tmp_path / "out", resolution=RES, tokenizer=tokenizer)
    assert sorted(r["source_path"] for r in prepared.dataset["train"]) == ["img/0.png", "img/2.png", "img/alias.png"]


# ---- faults that used to end in a traceback or pass silently -------------------------------------

def test_decompression_bomb_is_skipped_or_named(chexpert_dir, tmp_path, tokenizer):
    """On the old main a >2x-Pillow-limit image raised DecompressionBombError even with --on-missing skip."""
    victim = sorted((chexpert_dir / "CheXpert-v1.0-small" / "train").rglob("view1_frontal.jpg"))[0]
    Image.new("1", (20_000, 10_000)).save(victim, format="PNG")  # 200 M pixels, a few kB on disk
    rel = victim.relative_to(chexpert_dir).as_posix()
    with pytest.raises(UserError, match=r"too large \(20000x10000 = 200,000,000 pixels > --max-image-pixels 89,478,485\)"):
        prepare(corpus="chexpert", data_dir=chexpert_dir, output_dir=tmp_path / "a", resolution=RES, tokenizer=tokenizer)
    out = prepare(corpus="chexpert", data_dir=chexpert_dir, output_dir=tmp_path / "b", resolution=RES,
                  on_missing="skip", tokenizer=tokenizer)
    assert [(r["source_path"], r["reason"].split(" (")[0]) for r in out.skipped] == [(rel, "too large")]



def test_max_image_pixels_is_inclusive(pneumonia_dir, tmp_path, tokenizer):
    """Every fixture image is 96 x 80 = 7,680 pixels."""
    at_limit = prepare(corpus="pneumonia", data_dir=pneumonia_dir, output_dir=tmp_path / "a", resolution=RES,
                       max_image_pixels=7680, tokenizer=tokenizer)
    assert not at_limit.skipped and at_limit.info["max_image_pixels"] == 7680
    with pytest.raises(UserError, match=r"no images left: all 11 were skipped"):
        prepare(corpus="pneumonia", data_dir=pneumonia_dir, output_dir=tmp_path / "b", resolution=RES,
                max_image_pixels=7679, on_missing="skip", tokenizer=tokenizer)


@pytest.mark.parametrize("flag, value, message", [
    ("--max-shard-rows", "0", "--max-shard-rows must be a whole number >= 1, got 0"),
    ("--num-proc", "0", "--num-proc must be a whole number >= 1, got 0"),
    ("--limit", "0", "--limit must be a positive number of images, got 0"),
])
def test_bad_numbers_are_one_line_errors(pneumonia_dir, tmp_path, capsys, flag, value, message):
    """On the old main --max-shard-rows 0 ended in ZeroDivisionError."""
    argv = ["prepare", "--corpus", "pneumonia", "--data-dir", str(pneumonia_dir), "--output-dir", str(tmp_path / "o"), flag, value]
    assert main(argv) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "o").exists()


def _exit_code(argv: list[str]) -> int:
    """The CLI's exit status, whether the error came from argparse (SystemExit) or from the library (UserError)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize("value, message", [
    ("nan,0.5,0.5", "argument --split-fractions: 'nan' is not a finite number"),
    ("0.5,inf,0", "argument --split-fractions: 'inf' is not a finite number"),
    ("0.8,0.1", "must be three non-negative numbers (train, validation, test) summing to 1"),
])
def test_non_finite_or_short_fractions_are_refused(pneumonia_dir, tmp_path, capsys, value, message):
    argv = ["prepare", "--corpus", "pneumonia", "--data-dir", str(pneumonia_dir), "--output-dir", str(tmp_path / "o"),
            "--split-fractions", value]
    assert _exit_code(argv) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "o").exists()


def _chexpert_csv(data_dir: Path, fn) -> Path:
    csv_path = data_dir / "CheXpert-v1.0-small" / "train.csv"
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    fn(frame).to_csv(csv_path, index=False)
    return csv_path


def test_empty_splits_are_reported_in_info_card_and_log(chexpert_dir, tmp_path, tokenizer, caplog):
    """On the old main a header-only train.csv gave a dataset without train split and no word about it."""
    _chexpert_csv(chexpert_dir, lambda f: f.iloc[:0])
    out = prepare(corpus="chexpert", data_dir=chexpert_dir, output_dir=tmp_path / "o", resolution=RES, views="all",
                  tokenizer=tokenizer)
    assert out.info["empty_splits"] == ["train", "validation"] and list(out.info["num_rows"]) == ["test"]
    assert "split(s) train, validation have no images" in caplog.text
    assert "**Empty split(s): train, validation**" in (out.output_dir / CARD_FILE).read_text()


def test_duplicate_rows_error_keep_or_drop(chexpert_dir, tmp_path, tokenizer):
    """On the old main a repeated row was kept silently (the image trained twice, its patient counted twice)."""
    csv_path = _chexpert_csv(chexpert_dir, lambda f: pd.concat([f, f.iloc[[3]]], ignore_index=True))
    repeated = pd.read_csv(csv_path)["Path"].iloc[3].replace("CheXpert-v1.0-small/", "CheXpert-v1.0-small/", 1)
    n = len(pd.read_csv(csv_path)) + 8 - 1  # train rows + valid rows - the repeat
    with pytest.raises(UserError, match=rf"1 row\(s\) list an image that is already listed, e.g. {repeated} "
                                        rf"\({csv_path} line {n - 8 + 2}, first listed at {csv_path} line 5\)"):
        prepare(corpus="chexpert", data_dir=chexpert_dir, output_dir=tmp_path / "e", resolution=RES, views="all",
                tokenizer=tokenizer)
    keep = prepare(corpus="chexpert", data_dir=chexpert_dir, output_dir=tmp_path / "k", resolution=RES, views="all",
                   on_duplicate="keep", tokenizer=tokenizer)
    assert sum(keep.info["num_rows"].values()) == n + 1 and keep.info["duplicates"] == 1 and not keep.skipped
    assert "**1 row(s) listed an image already listed**; the repeats were kept" in (keep.output_dir / CARD_FILE).read_text()
    drop = prepare(corpus="chexpert", data_dir=chexpert_dir, output_dir=tmp_path / "d", resolution=RES, views="all",
                   on_duplicate="drop", tokenizer=tokenizer)
    assert sum(drop.info["num_rows"].values()) == n and drop.info["skipped"] == 1
    skipped = list(csv.DictReader((drop.output_dir / SKIPPED_FILE).open()))
    assert [(r["source_path"], r["reason"]) for r in skipped] == [(repeated, f"duplicate row ({csv_path} line {n - 8 + 2})")]


def test_images_without_caption_are_an_error_or_skipped(folder_sidecar_dir, tmp_path, tokenizer):
    """On the old main they were kept with an empty prompt (a warning, not counted)."""
    for name in ("case01.txt", "case04.txt"):
        (folder_sidecar_dir / name).unlink()
    with pytest.raises(UserError, match=r"2 image\(s\) listed by the corpus have no caption or report text for the "
                                        r"template 'report', first: .*case01.png \(empty prompt"):
        prepare(corpus="folder", data_dir=folder_sidecar_dir, output_dir=tmp_path / "e", resolution=RES, tokenizer=tokenizer)
    out = prepare(corpus="folder", data_dir=folder_sidecar_dir, output_dir=tmp_path / "s", resolution=RES,
                  on_missing="skip", tokenizer=tokenizer)
    assert sorted(r["source_path"] for r in out.skipped) == ["case01.png", "case04.png"]
    assert sum(out.info["num_rows"].values()) == 4 and out.info["skipped"] == 2
    assert all(row["prompt"] for split in out.dataset.values() for row in split)
