"""Input and output safety of prepare (issue 13): inputs are never deleted, --overwrite replaces only its own kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_cxr_diffusion.cli import main
from hf_cxr_diffusion.data.prepare import prepare
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
        prepare("pneumonia", pneumonia_dir, out, resolution=RES, overwrite=True, tokenizer=tokenizer)
    assert _files(pneumonia_dir) == before


def test_overwrite_replaces_a_prepared_dataset_and_nothing_else(pneumonia_dir, tmp_path, tokenizer):
    out = prepare("pneumonia", pneumonia_dir, tmp_path / "prepared", resolution=RES, tokenizer=tokenizer)
    prepare("pneumonia", pneumonia_dir, out, resolution=RES, limit=4, overwrite=True, tokenizer=tokenizer)
    assert sum(json.loads((out / "prepare_info.json").read_text())["num_rows"].values()) == 4
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(UserError, match=r"holds 1 entry that is not a prepared dataset \(notes.txt\)"):
        prepare("pneumonia", pneumonia_dir, out, resolution=RES, overwrite=True, tokenizer=tokenizer)
    assert (out / "notes.txt").read_text() == "my notes" and (out / "prepare_info.json").exists()
    other = tmp_path / "synthetic"
    (other / "data").mkdir(parents=True)
    (other / "README.md").write_text("a synthetic dataset card")
    with pytest.raises(UserError, match=r"is not a prepared dataset \(no prepare_info.json\); --overwrite only replaces"):
        prepare("pneumonia", pneumonia_dir, other, resolution=RES, overwrite=True, tokenizer=tokenizer)
    assert (other / "README.md").read_text() == "a synthetic dataset card"


def test_cli_output_dir_is_checked_and_out_is_a_deprecated_alias(pneumonia_dir, tmp_path, monkeypatch, capsys, caplog):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    base = ["prepare", "--corpus", "pneumonia", "--data-dir", str(pneumonia_dir), "--resolution", str(RES), "--limit", "3"]
    assert main([*base, "--output-dir", "."]) == 2
    assert "--output-dir . is the current folder or above it" in capsys.readouterr().err
    assert main([*base, "--out", "old-flag"]) == 0
    assert "--out is deprecated" in caplog.text and (tmp_path / "work" / "old-flag" / "prepare_info.json").exists()
