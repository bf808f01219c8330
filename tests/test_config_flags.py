"""cli._common.add_config_flags: one flag per config dataclass field, shared by `train` and `prepare`."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from hf_cxr_diffusion.cli import main
from hf_cxr_diffusion.cli._common import add_config_flags, config_values, finite_float


@dataclasses.dataclass
class Example:
    name: str = dataclasses.field(default="", metadata={"help": "a name", "required": True})
    rate: float = dataclasses.field(default=0.5, metadata={"help": "a rate"})
    steps: int | None = dataclasses.field(default=None, metadata={"help": "steps"})
    mode: str = dataclasses.field(default="a", metadata={"help": "mode", "choices": ("a", "b")})
    flag: bool = dataclasses.field(default=True, metadata={"help": "on or off"})
    words: list = dataclasses.field(default_factory=list, metadata={"help": "several words"})
    fractions: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.5], metadata={"help": "f", "sep": ","})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x")
    add_config_flags(parser, Example)
    return parser


def test_flags_follow_the_field_types():
    args = _parser().parse_args(["--name", "n", "--rate", "1e-3", "--steps", "4", "--mode", "b", "--no-flag",
                                 "--words", "p q", "r", "--fractions", "0.8, 0.2"])
    assert config_values(args, Example) == {"name": "n", "rate": 1e-3, "steps": 4, "mode": "b", "flag": False,
                                            "words": ["p q", "r"], "fractions": [0.8, 0.2]}
    assert config_values(_parser().parse_args(["--name", "n"]), Example) == {"name": "n"}  # defaults stay the config's
    help_text = _parser().format_help()
    assert "a rate (default: 0.5)" in help_text and "f (default: 0.5,0.5)" in help_text and "a name\n" in help_text


@pytest.mark.parametrize("argv", [["--rate", "nan"], ["--rate", "inf"], ["--rate", "-inf"], ["--fractions", "0.5,nan"],
                                  ["--mode", "c"], ["--steps", "1.5"]])
def test_bad_values_stop_at_parse_time(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["--name", "n", *argv])
    assert exc.value.code == 2 and "error: argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser().parse_args([])  # --name is required


def test_finite_float():
    assert finite_float("1e-4") == 1e-4
    with pytest.raises(argparse.ArgumentTypeError, match="'nan' is not a finite number"):
        finite_float("nan")


def test_train_learning_rate_nan_is_refused_before_any_work(tmp_path, capsys):
    """On the old main `train --learning-rate nan` was accepted (and trained on NaN)."""
    with pytest.raises(SystemExit) as exc:
        main(["train", "--pretrained-model", "x", "--dataset", "y", "--output-dir", str(tmp_path / "o"),
              "--learning-rate", "nan"])
    assert exc.value.code == 2
    assert "argument --learning-rate: 'nan' is not a finite number" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
