import os

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
