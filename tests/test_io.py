import os
from pathlib import Path

import pytest

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import atomic_path, ensure_output_dir, write_json_atomic


def test_atomic_file_is_untouched_on_error(tmp_path):
    target = tmp_path / "a.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == '{\n  "v": 1\n}\n'
    assert os.listdir(tmp_path) == ["a.json"]


def test_atomic_folder_replaces_whole(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "old.bin").write_bytes(b"1")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.bin").write_bytes(b"2")
    assert sorted(os.listdir(target)) == ["new.bin"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporaries left behind


def test_output_dir_errors(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        ensure_output_dir(tmp_path / "f")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        ensure_output_dir(tmp_path / "full", must_be_empty=True)


def test_unwritable_output_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(UserError, match="not writable"):
        ensure_output_dir(tmp_path)


@pytest.mark.parametrize("where, relation", [("corpus", "equal to"), ("corpus/sub/out", "inside"), (".", "above")])
def test_output_location_equal_inside_or_above_an_input_is_refused(tmp_path, monkeypatch, where, relation):
    from hf_cxr_diffusion.io import check_output_location

    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "corpus" / "sub")  # inputs are named before the current folder
    out = tmp_path / where
    with pytest.raises(UserError, match=rf"--output-dir {out} is {relation} the input --data-dir {tmp_path / 'corpus'};"):
        check_output_location(out, {"--data-dir": tmp_path / "corpus"})
    assert check_output_location(tmp_path / "elsewhere", {"--data-dir": tmp_path / "corpus", "--dataset": "org/hub-id"}) \
        == tmp_path / "elsewhere"


def test_output_location_follows_symlinks_and_refuses_the_current_folder(tmp_path, monkeypatch):
    from hf_cxr_diffusion.io import check_output_location

    (tmp_path / "corpus").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "corpus")
    with pytest.raises(UserError, match="is equal to the input --data-dir"):
        check_output_location(tmp_path / "link", {"--data-dir": tmp_path / "corpus"})
    monkeypatch.chdir(tmp_path / "corpus")
    for out in (".", "..", str(tmp_path)):
        with pytest.raises(UserError, match=rf"--output-dir {out} is the current folder or above it"):
            check_output_location(out, {})
    assert check_output_location("new", {}) == Path("new")


def test_replaceable_only_when_every_entry_is_owned(tmp_path):
    from hf_cxr_diffusion.io import check_replaceable

    (tmp_path / "data").mkdir()
    (tmp_path / "README.md").write_text("x")
    assert check_replaceable(tmp_path, {"data", "README.md"}, what="a prepared dataset") == tmp_path
    for i in range(7):
        (tmp_path / f"mine{i}.txt").write_text("keep")
    with pytest.raises(UserError, match=r"holds 7 entries that are not a prepared dataset \(mine0.txt, .*mine4.txt and 2 more\)"):
        check_replaceable(tmp_path, {"data", "README.md"}, what="a prepared dataset")
