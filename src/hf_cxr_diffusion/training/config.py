"""The training configuration: one dataclass, loadable from YAML, every field also a CLI flag.

``TrainConfig`` is the single source of truth: each field carries ``metadata={"help": ...}``,
the CLI builds one kebab-case flag per field from it, and a YAML preset (``configs/*.yaml``) may
set any field (snake_case or kebab-case keys). Command-line values override the YAML file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.metrics.catalog import higher_is_better

MIXED_PRECISION = ("no", "fp16", "bf16")
REPORT_TO = ("none", "tensorboard", "wandb")
PREDICTION_TYPES = ("epsilon", "v_prediction")
#: ``diffusers.optimization.get_scheduler`` names plus our cosine annealing with ``eta_min``
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "cosine_annealing",
)
#: validation metrics and whether larger is better (for ``--keep-best``), from each metric's ``higher_is_better``
METRIC_DIRECTION = {name: "max" if higher_is_better(name) else "min" for name in ("xrv_fid", "vendi")}


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs. Defaults follow diffusers' ``train_text_to_image`` examples."""

    # --- inputs / outputs
    pretrained_model: str = _f("", "base diffusers pipeline folder or hub id (e.g. runwayml/stable-diffusion-v1-5)")
    dataset: str = _f("", "prepared dataset folder or hub id readable by datasets.load_dataset (columns image, prompt)")
    dataset_split: str = _f("train", "split to train on")
    image_column: str = _f("image", "dataset column holding the images")
    prompt_column: str = _f("prompt", "dataset column holding the prompts")
    output_dir: str = _f("", "output folder (final weights, checkpoints, summary, validation images)")
    method: str = _f("lora", "fine-tuning method registered in hf_cxr_diffusion.methods.registry (full, lora, dora, "
                              "bitfit, difffit, selora); an unknown name lists the valid ones")
    method_config: dict = _f({}, "options of the method's config dataclass: JSON/YAML dict or key=value pairs")
    # --- schedule
    seed: int = _f(0, "random seed (data order, noise, timesteps, adapter init)")
    resolution: int = _f(512, "training image side in pixels (resize + centre crop); multiple of 8")
    train_batch_size: int = _f(4, "images per device per micro-batch")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    num_train_epochs: int = _f(1, "epochs (ignored when --max-train-steps is set)")
    max_train_steps: int | None = _f(None, "total optimizer steps; overrides --num-train-epochs")
    # --- optimizer
    learning_rate: float = _f(1e-4, "peak learning rate")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.999, "AdamW beta2")
    adam_weight_decay: float = _f(1e-2, "AdamW weight decay")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon")
    use_8bit_adam: bool = _f(False, "bitsandbytes 8-bit AdamW (falls back to torch AdamW with a warning if missing)")
    max_grad_norm: float = _f(1.0, "gradient clipping norm for every method (0 disables)")
    lr_scheduler: str = _f("constant", f"learning-rate schedule, one of {LR_SCHEDULERS}", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = _f(0, "linear warm-up steps")
    lr_t_max: int | None = _f(None, "cosine_annealing: period T_max in steps (default: total steps)")
    lr_eta_min: float = _f(0.0, "cosine_annealing: minimum learning rate eta_min")
    lr_num_cycles: int = _f(1, "cosine_with_restarts: number of cycles")
    lr_power: float = _f(1.0, "polynomial: power")
    # --- diffusion objective
    prediction_type: str | None = _f(None, "epsilon or v_prediction (default: the base model's scheduler)")
    snr_gamma: float | None = _f(None, "min-SNR-gamma loss weighting (Hang et al. 2023); 5.0 is typical")
    noise_offset: float = _f(0.0, "noise offset (Guttenberg 2023); 0.05-0.1 helps very dark/bright images")
    proportion_empty_prompts: float = _f(0.0, "share of training prompts replaced by the empty prompt (caption dropout "
                                              "for classifier-free guidance, Ho & Salimans 2022)")
    # --- efficiency
    mixed_precision: str = _f("no", f"one of {MIXED_PRECISION}; trainable parameters stay fp32", choices=MIXED_PRECISION)
    gradient_checkpointing: bool = _f(False, "trade compute for memory in the trained components")
    cache_latents: bool = _f(True, "cache VAE posteriors / text embeddings when the VAE / text encoder are frozen")
    torch_compile: bool = _f(False, "torch.compile the U-Net forward")
    use_ema: bool = _f(False, "keep an exponential moving average of the trainable weights (used for validation and the final save)")
    ema_decay: float = _f(0.9999, "maximum EMA decay")
    # --- checkpoints
    checkpointing_steps: int = _f(500, "save a resumable checkpoint-<step> every N optimizer steps (0: never)")
    checkpoints_total_limit: int | None = _f(None, "keep at most this many checkpoints")
    resume_from_checkpoint: str | None = _f(None, "'latest' or a checkpoint folder to resume from")
    # --- validation
    validation_prompts: list = _f([], "prompts for validation images (fixed seeds)")
    validation_steps: int = _f(0, "save a validation image grid every N steps (0: only at the end)")
    num_validation_inference_steps: int = _f(20, "sampler steps for validation images")
    validation_metrics_steps: int = _f(0, "compute validation metrics every N steps (0: never)")
    validation_metrics: list = _f(["xrv_fid", "vendi"], f"metrics for validation, from {sorted(METRIC_DIRECTION)}")
    num_validation_metric_images: int = _f(16, "K: generated and held-out real images per metric evaluation")
    validation_split: str = _f("validation", "held-out split giving real images and prompts for validation metrics")
    metrics_allow_random_weights: bool = _f(False, "allow random feature-extractor weights in metrics (tests only)")
    metrics_weights_path: str | None = _f(None, "feature-extractor weights file for the metrics")
    keep_best: str | None = _f(None, "keep the best checkpoint by this validation metric in OUTPUT_DIR/best")
    final_reload_check: bool = _f(True, "LoRA-like methods: reload the saved adapter on a fresh pipeline and compare")
    report_to: str = _f("none", f"experiment tracker, one of {REPORT_TO}", choices=REPORT_TO)
    # --- DreamBooth prior preservation (any method)
    instance_prompt: str | None = _f(None, "DreamBooth: one prompt for every training image (default: the dataset's prompts)")
    class_prompt: str | None = _f(None, "DreamBooth prior preservation: class prompt (enables the prior loss)")
    class_data_dir: str | None = _f(None, "DreamBooth: folder of class images (generated by the base model if short)")
    num_class_images: int = _f(100, "DreamBooth: number of class images")
    prior_loss_weight: float = _f(1.0, "DreamBooth: weight of the prior-preservation loss")
    class_generation_steps: int = _f(25, "DreamBooth: sampler steps when generating class images")

    @property
    def with_prior_preservation(self) -> bool:
        return self.class_prompt is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a dict with snake_case or kebab-case keys; unknown keys -> :class:`UserError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        clean = {str(k).replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(clean) - names)
        if unknown:
            raise UserError(f"{source}: unknown training option(s) {unknown}; valid options: {sorted(names)}")
        return cls(**clean)

    def validate(self) -> TrainConfig:
        """Check values that do not need the model or the data; raise :class:`UserError` naming the field."""
        for name in ("pretrained_model", "dataset", "output_dir"):
            if not getattr(self, name):
                raise UserError(f"--{name.replace('_', '-')} is required")
        if self.resolution <= 0 or self.resolution % 8:
            raise UserError(f"--resolution {self.resolution} is not a positive multiple of 8 (the VAE factor); use e.g. 512")
        for name in ("train_batch_size", "gradient_accumulation_steps", "num_train_epochs"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_train_steps is not None and self.max_train_steps < 1:
            raise UserError(f"--max-train-steps must be >= 1, got {self.max_train_steps}")
        for name, allowed in (
            ("mixed_precision", MIXED_PRECISION),
            ("report_to", REPORT_TO),
            ("lr_scheduler", LR_SCHEDULERS),
        ):
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is not one of {list(allowed)}")
        if self.prediction_type is not None and self.prediction_type not in PREDICTION_TYPES:
            raise UserError(f"--prediction-type {self.prediction_type!r} is not one of {list(PREDICTION_TYPES)}")
        if not 0.0 <= self.proportion_empty_prompts < 1.0:
            raise UserError(f"--proportion-empty-prompts must be in [0, 1), got {self.proportion_empty_prompts}")
        if not isinstance(self.method_config, dict):
            raise UserError(f"--method-config must be a mapping, got {type(self.method_config).__name__}")
        if isinstance(self.validation_prompts, str):
            self.validation_prompts = [self.validation_prompts]
        bad = sorted(set(self.validation_metrics) - set(METRIC_DIRECTION))
        if bad:
            raise UserError(f"--validation-metrics {bad} unknown; valid: {sorted(METRIC_DIRECTION)}")
        if self.keep_best is not None:
            if self.keep_best not in self.validation_metrics:
                raise UserError(f"--keep-best {self.keep_best!r} must be one of --validation-metrics {self.validation_metrics}")
            if self.validation_metrics_steps <= 0:
                raise UserError("--keep-best needs --validation-metrics-steps > 0")
        if self.with_prior_preservation and not self.class_data_dir:
            raise UserError("--class-prompt (prior preservation) needs --class-data-dir")
        if self.num_class_images < 1:
            raise UserError(f"--num-class-images must be >= 1, got {self.num_class_images}")
        return self


def parse_method_config(values: str | list[str] | dict | None) -> dict[str, Any]:
    """``--method-config``: a JSON/YAML mapping string, or ``key=value`` pairs (values parsed as YAML)."""
    if values is None:
        return {}
    if isinstance(values, dict):
        return dict(values)
    items = [values] if isinstance(values, str) else list(values)
    if len(items) == 1 and items[0].lstrip().startswith("{"):
        data = yaml.safe_load(items[0])
        if not isinstance(data, dict):
            raise UserError(f"--method-config {items[0]!r} is not a mapping")
        return data
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--method-config item {item!r} is not key=value (or pass one JSON/YAML mapping)")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Options of a YAML file; ``extends: other.yaml`` (relative to the file) loads shared options first."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    if path.resolve() in _seen:
        raise UserError(f"config file {path} extends itself (cycle through {[str(p) for p in _seen]})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of options, got {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = load_yaml(path.parent / parent, (*_seen, path.resolve()))
    if "method_config" in data and data.get("method", base.get("method")) == base.get("method"):
        data["method_config"] = {**parse_method_config(base.get("method_config")), **parse_method_config(data["method_config"])}
    return {**base, **data}


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """YAML file (optional) merged with ``overrides`` (command-line values win; ``method_config`` merges by key)."""
    data = load_yaml(path) if path is not None else {}
    overrides = {k: v for k, v in (overrides or {}).items()}
    if "method_config" in data:
        data["method_config"] = parse_method_config(data["method_config"])
    if "method_config" in overrides:
        extra = parse_method_config(overrides.pop("method_config"))
        same_method = overrides.get("method", data.get("method")) == data.get("method")
        data["method_config"] = {**(data.get("method_config", {}) if same_method else {}), **extra}
    elif "method" in overrides and overrides["method"] != data.get("method", overrides["method"]):
        data.pop("method_config", None)  # the preset's options belong to another method
    data.update(overrides)
    return TrainConfig.from_dict(data, source=str(path) if path else "config")

