"""TrainConfig: YAML + command-line merge, --method-config parsing, presets' `extends`, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_cxr_diffusion.cli import build_parser, main
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.training.config import TrainConfig, load_config, parse_method_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _cli_overrides(argv: list[str]) -> tuple[Path | None, dict]:
    args = build_parser().parse_args(["train", *argv])
    names = set(TrainConfig.help())
    return args.config, {k: v for k, v in vars(args).items() if k in names}


def test_command_line_overrides_yaml_and_merges_method_config(tmp_path: Path) -> None:
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("method: lora\nlearning-rate: 0.001\nresolution: 128\nmethod_config: {rank: 8, lora_alpha: 8}\n")
    path, overrides = _cli_overrides(
        ["--config", str(yaml_file), "--resolution", "64", "--method-config", "rank=2", "lora_dropout=0.1",
         "--no-cache-latents", "--validation-prompts", "a", "b"]
    )
    cfg = load_config(path, overrides)
    assert cfg.resolution == 64  # command line wins
    assert cfg.learning_rate == 0.001  # kebab-case YAML key
    assert cfg.method_config == {"rank": 2, "lora_alpha": 8, "lora_dropout": 0.1}
    assert cfg.cache_latents is False
    assert cfg.validation_prompts == ["a", "b"]
    assert cfg.seed == 0  # untouched default


def test_switching_method_on_the_command_line_drops_the_presets_method_config() -> None:
    cfg = load_config(CONFIGS / "paradigm-08-lora.yaml", {"method": "bitfit"})
    assert cfg.method == "bitfit" and cfg.method_config == {}


def test_extends_inherits_shared_options() -> None:
    cfg = load_config(CONFIGS / "paradigm-05-full-vae-unet.yaml")
    assert (cfg.pretrained_model, cfg.resolution, cfg.gradient_accumulation_steps) == ("runwayml/stable-diffusion-v1-5", 512, 4)
    assert cfg.method == "full"
    assert cfg.method_config == {"components": ["vae", "unet"], "unet_lr": 1e-5, "vae_lr": 1e-6, "vae_recon_weight": 1.0}


def test_method_config_forms() -> None:
    assert parse_method_config('{"rank": 4, "target_modules": ["to_q"]}') == {"rank": 4, "target_modules": ["to_q"]}
    assert parse_method_config(["rank=4", "use-dora=true"]) == {"rank": 4, "use_dora": True}
    with pytest.raises(UserError, match="not key=value"):
        parse_method_config(["rank"])


def test_unknown_yaml_option_lists_valid_ones(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("learnin_rate: 1\n")
    with pytest.raises(UserError, match=r"unknown training option\(s\) \['learnin_rate'\].*learning_rate"):
        load_config(bad)


def test_resolution_not_divisible_by_8_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    code = main(["train", "--pretrained-model", "x", "--dataset", "y", "--output-dir", str(tmp_path), "--resolution", "60"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--resolution 60 is not a positive multiple of 8" in err and len(err.strip().splitlines()) == 1


def test_keep_best_needs_metric_steps() -> None:
    cfg = TrainConfig(pretrained_model="m", dataset="d", output_dir="o", keep_best="vendi")
    with pytest.raises(UserError, match="--keep-best needs --validation-metrics-steps"):
        cfg.validate()


@pytest.mark.parametrize(("metric", "better", "worse"), [("vendi", 3.0, 1.0), ("xrv_fid", 1.0, 3.0)])
def test_keep_best_follows_each_metrics_direction(metric: str, better: float, worse: float, tmp_path) -> None:
    """--keep-best keeps the larger Vendi and the smaller FID (each metric's own ``higher_is_better``)."""
    import contextlib

    from hf_cxr_diffusion.training.state import TrainerState
    from hf_cxr_diffusion.training.validation import Validator

    cfg = TrainConfig(pretrained_model="m", dataset="d", output_dir=str(tmp_path), validation_metrics=[metric],
                      keep_best=metric, validation_metrics_steps=1)
    state = TrainerState()
    validator = Validator(cfg, None, None, tmp_path, state, contextlib.nullcontext)
    state.best = {"metric": metric, "value": 2.0, "step": 1}
    assert validator._improves(better) and not validator._improves(worse) and not validator._improves(float("nan"))
