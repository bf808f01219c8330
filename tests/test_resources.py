"""Shipped folders found from the package: presets by name, card templates, metric modules (issue 18)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.resources import SHIPPED, metric_module_dir, presets, resolve_config, resource_dir

REPO = Path(__file__).resolve().parents[1]


def test_the_clone_reads_its_own_top_level_folders() -> None:
    assert {name: resource_dir(name) for name in SHIPPED} == {name: REPO / name for name in SHIPPED}


def test_config_accepts_a_shipped_preset_name_or_a_path(tmp_path: Path) -> None:
    from hf_cxr_diffusion.training.config import load_config

    assert resolve_config("paradigm-08-lora") == REPO / "configs" / "paradigm-08-lora.yaml"
    assert resolve_config("paradigm-08-lora.yaml") == REPO / "configs" / "paradigm-08-lora.yaml"
    cfg = load_config("paradigm-08-lora", {"output_dir": str(tmp_path / "out")})
    assert cfg.method == "lora" and cfg.method_config["rank"] == 8  # extends paradigm/_base.yaml, as from a path
    own = tmp_path / "mine.yaml"
    own.write_text("extends: " + str(REPO / "configs" / "paradigm-08-lora.yaml") + "\nlearning_rate: 0.5\n")
    assert load_config(own, {"output_dir": str(tmp_path / "out")}).learning_rate == 0.5
    with pytest.raises(UserError, match=r"--config paradigm-99: no such file and no shipped preset.*cxr-diffusion presets"):
        resolve_config("paradigm-99")
    assert "_base" not in " ".join(presets()) and "paradigm/_base" not in presets()


def test_presets_command_lists_every_shipped_preset(capsys) -> None:
    from hf_cxr_diffusion.cli import main

    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(presets())
    assert any(line.startswith("paradigm-09-dora") and "DoRA on the U-Net" in line for line in lines)


def test_publish_metric_takes_a_shipped_module_name(tmp_path: Path) -> None:
    assert metric_module_dir("xrv_fid") == REPO / "metrics" / "xrv_fid"
    assert metric_module_dir(tmp_path) == tmp_path
