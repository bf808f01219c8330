"""`cxr-diffusion train` flags: diffusers' spellings, refused flags with reasons, --smoke, --version, usage, defaults.

Parse only: nothing here trains.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from hf_cxr_diffusion.cli import build_parser, main, parse_args
from hf_cxr_diffusion.cli._common import _scalar_type
from hf_cxr_diffusion.cli.train import REFUSED, train_overrides
from hf_cxr_diffusion.training.config import SMOKE_OVERRIDES, TrainConfig, diffusers_flag, load_config

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
ALIASED = sorted(name for name, f in FIELDS.items() if diffusers_flag(f))


def _config(argv: list[str]) -> dict:
    args = parse_args(build_parser(), ["train", *argv])
    return load_config(args.config, train_overrides(args), smoke=args.smoke).to_dict()


def _sample(name: str) -> tuple[list[str], list[str]]:
    """(native argv, diffusers argv) giving ``name`` a value different from its default."""
    field = FIELDS[name]
    kind = _scalar_type(typing.get_type_hints(TrainConfig)[name])
    native, alias = f"--{name.replace('_', '-')}", diffusers_flag(field)
    if kind is bool:
        return [native], [alias]
    if "choices" in field.metadata:
        value = field.metadata["choices"][-1]
    else:
        value = {int: "7", float: "0.25"}.get(kind, "some value")
    return [native, value], [alias, value]


def test_the_diffusers_spellings_are_the_ones_users_type():
    flags = {diffusers_flag(FIELDS[n]) for n in ALIASED}
    assert {"--pretrained_model_name_or_path", "--output_dir", "--train_batch_size", "--learning_rate",
            "--max_train_steps", "--gradient_accumulation_steps", "--lr_scheduler", "--lr_warmup_steps",
            "--mixed_precision", "--checkpointing_steps", "--resume_from_checkpoint", "--checkpoints_total_limit",
            "--resolution", "--seed", "--snr_gamma", "--caption_column", "--image_column", "--train_data_dir",
            "--validation_prompt", "--revision", "--variant", "--allow_tf32", "--logging_dir", "--max_train_samples",
            "--num_validation_images", "--report_to", "--dataset_name"} <= flags


@pytest.mark.parametrize("name", ALIASED)
def test_each_diffusers_alias_gives_the_config_of_the_native_flag(name):
    native, alias = _sample(name)
    default = TrainConfig().to_dict()
    got_native, got_alias = _config(native), _config(alias)
    assert got_native == got_alias
    assert got_native[name] != default[name]


def test_rank_is_the_method_configs_rank_and_merges_with_other_options():
    assert _config(["--rank", "16"])["method_config"] == {"rank": 16}
    assert _config(["--method-config", "lora_alpha=8", "--rank", "4"])["method_config"] == {"lora_alpha": 8, "rank": 4}
    assert _config(["--config", "configs/paradigm-08-lora.yaml", "--rank", "2"])["method_config"]["rank"] == 2


def test_center_crop_is_accepted_and_changes_nothing():
    assert _config(["--center_crop"]) == _config([])


@pytest.mark.parametrize("flag", sorted(REFUSED))
def test_diffusers_flags_without_a_meaning_here_stop_with_the_reason(flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", flag])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("usage: cxr-diffusion train ")
    assert f"{flag} is not supported: {REFUSED[flag]}" in " ".join(err.split())


def test_push_to_hub_points_at_publish(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--push_to_hub"])
    assert "use `cxr-diffusion publish adapter OUTPUT_DIR --repo-id ORG/NAME`" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("command, required", [("train", []), ("generate", ["--pretrained-model", "m", "--out", "o", "--labels-csv", "l"]),
                                               ("prepare", ["--corpus", "folder", "--data-dir", "d", "--output-dir", "o"])])
def test_an_unknown_flag_prints_the_subcommands_usage(command, required, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, *required, "--no-such-flag", "1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith(f"usage: cxr-diffusion {command} ")
    assert f"cxr-diffusion {command}: error: unrecognized arguments: --no-such-flag 1" in err


def test_version(capsys):
    from hf_cxr_diffusion import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"cxr-diffusion {__version__}"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_every_help_shows_the_defaults(command):
    parser = _subparsers()[command]
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if (not action.option_strings or action.help in (None, argparse.SUPPRESS)
                or action.default in (None, argparse.SUPPRESS, False, "", []) or isinstance(action, argparse._HelpAction)):
            continue
        assert "default" in " ".join(action.help.split()) or "(default: " in text, (command, action.option_strings)


def test_train_help_names_defaults_and_the_diffusers_spelling():
    text = " ".join(_subparsers()["train"].format_help().split())
    assert "images per device per micro-batch (default: 4) [also --train_batch_size]" in text
    assert "--smoke" in text and "max_train_steps=2" in text


def test_method_config_comma_lists_are_lists():
    from hf_cxr_diffusion.methods.registry import get_method

    for value, expected in (("vae", ["vae"]), ("vae,text_encoder", ["vae", "text_encoder"])):
        cfg = _config(["--method", "full", "--method-config", f"components={value}"])
        assert get_method(cfg["method"], cfg["method_config"]).config.components == expected
    lora = get_method("lora", _config(["--method-config", "target_modules=to_q,to_v"])["method_config"])
    assert lora.config.target_modules == ["to_q", "to_v"]
    assert get_method("lora", {"target_modules": "all-linear"}).config.target_modules == "all-linear"


def test_smoke_overrides_a_preset_last():
    cfg = _config(["--config", "configs/paradigm-08-lora.yaml", "--resolution", "256", "--smoke"])
    assert {k: cfg[k] for k in SMOKE_OVERRIDES} == SMOKE_OVERRIDES
    assert cfg["method"] == "lora" and cfg["method_config"]["rank"] == 8  # the preset's method stays


def test_output_dir_missing_says_what_it_is(tmp_path, capsys):
    code = main(["train", "--pretrained-model", "x", "--dataset", "y"])
    assert code == 2
    assert "--output-dir is required: the new folder the run writes (weights, checkpoints, summary), e.g. " \
           "--output-dir runs/lora" in capsys.readouterr().err


def test_dataset_and_train_data_dir_exclude_each_other(tmp_path, capsys):
    assert main(["train", "--pretrained-model", "x", "--dataset", "y", "--train_data_dir", "z",
                 "--output-dir", str(tmp_path / "o")]) == 2
    assert "give exactly one of --dataset" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
