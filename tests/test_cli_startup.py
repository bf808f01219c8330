"""`cxr-diffusion` fills in only the chosen subcommand's arguments: `--help` imports no heavy library, and the
lazily built parser parses and documents every command exactly like the complete one."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from hf_cxr_diffusion.cli import COMMANDS, build_parser


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))


def _imported_after(argv: list[str]) -> dict:
    """Run ``main(argv)`` in a fresh interpreter; which heavy libraries it imported, its exit code and stdout."""
    code = ("import json, sys\nfrom hf_cxr_diffusion.cli import main\ntry:\n    rc = main(sys.argv[1:])\n"
            "except SystemExit as e:\n    rc = e.code\nprint(json.dumps({'rc': rc, 'mods': sorted(m for m in "
            "('torch', 'pandas', 'diffusers', 'transformers', 'datasets', 'scipy', 'matplotlib') if m in sys.modules)}))")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    *help_lines, last = proc.stdout.strip().splitlines()
    return {**json.loads(last), "out": "\n".join(help_lines)}


def test_top_level_help_lists_every_command_without_importing_torch() -> None:
    result = _imported_after(["--help"])
    assert result["rc"] == 0 and result["mods"] == []
    complete = _subcommands(build_parser())
    for name in COMMANDS:
        command = name.replace("_", "-")
        assert command in result["out"], command
        assert complete.choices[command].description  # every command documents itself


def test_train_help_imports_no_heavy_library() -> None:
    result = _imported_after(["train", "--help"])
    assert result["rc"] == 0 and "--max-train-steps" in result["out"]
    assert result["mods"] == []  # not even torch: the config names the validation metrics without loading them


@pytest.mark.parametrize("command", [name.replace("_", "-") for name in COMMANDS])
def test_lazy_parser_gives_the_complete_parsers_help(command: str) -> None:
    lazy, complete = _subcommands(build_parser(lazy=True)), _subcommands(build_parser())
    assert command in lazy.pending  # not filled before it is chosen
    lazy.fill(command)
    assert lazy.choices[command].format_help() == complete.choices[command].format_help()


def test_lazy_parser_parses_like_the_complete_one() -> None:
    argv = ["train", "--pretrained-model", "m", "--dataset", "d", "--output-dir", "o", "--train_batch_size", "2", "--rank", "8"]
    lazy = vars(build_parser(lazy=True).parse_args(argv))
    complete = vars(build_parser().parse_args(argv))
    assert lazy == complete and lazy["train_batch_size"] == 2 and lazy["rank"] == 8


def test_training_summary_and_loss_curve_import_no_matplotlib(tmp_path) -> None:
    """A training run's artefacts (summary + loss_curve.png, drawn with PIL) need no matplotlib (~1 s of import)."""
    code = ("import sys\nfrom hf_cxr_diffusion.training.summary import write_summary\n"
            f"write_summary({str(tmp_path)!r}, {{'method': 'lora', 'dataset': 'd'}}, [(1, 1.0), (2, 0.5)])\n"
            "print('matplotlib' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
    assert (tmp_path / "loss_curve.png").stat().st_size > 0 and (tmp_path / "training_summary.json").is_file()


def test_the_console_script_returns_the_commands_exit_code_and_freezes_the_heap_before_exit(tmp_path) -> None:
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "cxr-diffusion"]
    assert script.value == "hf_cxr_diffusion.cli:console_main"
    code = ("import gc, json, sys\nfrom hf_cxr_diffusion.cli import console_main\nrc = console_main()\n"
            "print(json.dumps({'rc': rc, 'frozen': gc.get_freeze_count()}))")
    for argv, rc in ((["make-tiny-model", str(tmp_path / "tiny")], 0),
                     (["demo", "--output-dir", str(tmp_path / "demo"), "--train-steps", "0"], 2)):  # a UserError
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["rc"] == rc and result["frozen"] > 0, proc.stderr[-500:]  # what is alive is left to the OS
    assert (tmp_path / "tiny" / "model_index.json").is_file()  # written in full before the freeze
