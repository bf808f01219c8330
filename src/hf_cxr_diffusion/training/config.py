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
from hf_cxr_diffusion.resources import resolve_config

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
#: metrics ``--validation-metrics`` / ``--keep-best`` may name (their direction: the metric's ``higher_is_better``)
VALIDATION_METRICS = ("vendi", "xrv_fid")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs. Defaults follow diffusers' ``train_text_to_image`` examples."""

    # --- inputs / outputs
    pretrained_model: str = _f("", "base diffusers pipeline folder or hub id (e.g. runwayml/stable-diffusion-v1-5)",
                               diffusers="pretrained_model_name_or_path")
    revision: str | None = _f(None, "hub revision (branch, tag or commit) of --pretrained-model", diffusers=True)
    variant: str | None = _f(None, "weights variant of --pretrained-model (e.g. fp16: diffusion_pytorch_model.fp16.safetensors)",
                             diffusers=True)
    dataset: str = _f("", "prepared dataset folder or hub id readable by datasets.load_dataset (columns image, prompt)",
                      diffusers="dataset_name")
    train_data_dir: str | None = _f(None, "instead of --dataset: a folder of images with captions (the `folder` corpus of "
                                          "`cxr-diffusion prepare`: metadata.csv/.jsonl, name.txt sidecars or class "
                                          "sub-folders), prepared in memory at --resolution; every image trains", diffusers=True)
    data_dir: str | None = _f(None, "with a prompts-only --dataset (`publish dataset --prompts-only`): your local copy "
                                    "of the corpus, joined to each row by its source_path (attach_images)")
    dataset_split: str = _f("train", "split to train on")
    image_column: str = _f("image", "dataset column holding the images", diffusers=True)
    prompt_column: str = _f("prompt", "dataset column holding the prompts", diffusers="caption_column")
    max_train_samples: int | None = _f(None, "train on the first N images of the split only (debugging)", diffusers=True)
    output_dir: str = _f("", "output folder (final weights, checkpoints, summary, validation images)", diffusers=True)
    method: str = _f("lora", "fine-tuning method registered in hf_cxr_diffusion.methods.registry (full, lora, dora, "
                              "bitfit, difffit, selora); an unknown name lists the valid ones")
    method_config: dict = _f({}, "options of the method's config dataclass: JSON/YAML dict or key=value pairs")
    # --- schedule
    seed: int = _f(0, "random seed (data order, noise, timesteps, adapter init)", diffusers=True)
    resolution: int = _f(512, "training image side in pixels (resize + centre crop); multiple of 8", diffusers=True)
    train_batch_size: int = _f(4, "images per device per micro-batch", diffusers=True)
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step", diffusers=True)
    num_train_epochs: int = _f(1, "epochs (ignored when --max-train-steps is set)", diffusers=True)
    max_train_steps: int | None = _f(None, "total optimizer steps; overrides --num-train-epochs", diffusers=True)
    # --- optimizer
    learning_rate: float = _f(1e-4, "peak learning rate", diffusers=True)
    adam_beta1: float = _f(0.9, "AdamW beta1", diffusers=True)
    adam_beta2: float = _f(0.999, "AdamW beta2", diffusers=True)
    adam_weight_decay: float = _f(1e-2, "AdamW weight decay", diffusers=True)
    adam_epsilon: float = _f(1e-8, "AdamW epsilon", diffusers=True)
    use_8bit_adam: bool = _f(False, "bitsandbytes 8-bit AdamW (falls back to torch AdamW with a warning if missing)",
                             diffusers=True)
    max_grad_norm: float = _f(1.0, "gradient clipping norm for every method (0 disables)", diffusers=True)
    lr_scheduler: str = _f("constant", f"learning-rate schedule, one of {LR_SCHEDULERS}", choices=LR_SCHEDULERS,
                           diffusers=True)
    lr_warmup_steps: int = _f(0, "linear warm-up steps", diffusers=True)
    lr_t_max: int | None = _f(None, "cosine_annealing: period T_max in steps (default: total steps)")
    lr_eta_min: float = _f(0.0, "cosine_annealing: minimum learning rate eta_min")
    lr_num_cycles: int = _f(1, "cosine_with_restarts: number of cycles", diffusers=True)
    lr_power: float = _f(1.0, "polynomial: power", diffusers=True)
    # --- diffusion objective
    prediction_type: str | None = _f(None, "epsilon or v_prediction (default: the base model's scheduler)", diffusers=True)
    snr_gamma: float | None = _f(None, "min-SNR-gamma loss weighting (Hang et al. 2023); 5.0 is typical", diffusers=True)
    noise_offset: float = _f(0.0, "noise offset (Guttenberg 2023); 0.05-0.1 helps very dark/bright images", diffusers=True)
    proportion_empty_prompts: float = _f(0.0, "share of training prompts replaced by the empty prompt (caption dropout "
                                              "for classifier-free guidance, Ho & Salimans 2022)", diffusers=True)
    # --- efficiency
    mixed_precision: str = _f("no", f"one of {MIXED_PRECISION}; trainable parameters stay fp32", choices=MIXED_PRECISION,
                              diffusers=True)
    allow_tf32: bool = _f(False, "CUDA: allow TF32 matmuls and cuDNN convolutions on Ampere+ GPUs (faster, ~1e-3 "
                                 "relative error); no effect on CPU", diffusers=True)
    gradient_checkpointing: bool = _f(False, "trade compute for memory in the trained components", diffusers=True)
    cache_latents: bool = _f(True, "cache VAE posteriors / text embeddings when the VAE / text encoder are frozen")
    torch_compile: bool = _f(False, "torch.compile the U-Net forward")
    use_ema: bool = _f(False, "keep an exponential moving average of the trainable weights (used for validation and the "
                              "final save)", diffusers=True)
    ema_decay: float = _f(0.9999, "maximum EMA decay")
    # --- checkpoints
    checkpointing_steps: int = _f(500, "save a resumable checkpoint-<step> every N optimizer steps (0: never)",
                                  diffusers=True)
    checkpoints_total_limit: int | None = _f(None, "keep at most this many checkpoints", diffusers=True)
    resume_from_checkpoint: str | None = _f(None, "'latest' or a checkpoint folder to resume from", diffusers=True)
    overwrite: bool = _f(False, "train into an output folder written by a different run, replacing only the trainer's "
                                "outputs there (checkpoints, best/, validation/, summary)")
    # --- validation
    validation_prompts: list = _f([], "prompts for validation images (fixed seeds)", diffusers="validation_prompt")
    num_validation_images: int = _f(1, "validation images per prompt (image i of a grid uses seed --seed + i)",
                                    diffusers=True)
    validation_steps: int = _f(0, "save a validation image grid every N steps (0: only at the end)", diffusers=True)
    validation_epochs: int = _f(0, "instead of --validation-steps: a validation grid every N epochs", diffusers=True)
    num_validation_inference_steps: int = _f(20, "sampler steps for validation images")
    validation_metrics_steps: int = _f(0, "compute validation metrics every N steps (0: never)")
    validation_metrics: list = _f(["xrv_fid", "vendi"], f"metrics for validation, from {list(VALIDATION_METRICS)}")
    num_validation_metric_images: int = _f(16, "K: generated and held-out real images per metric evaluation")
    validation_split: str = _f("validation", "held-out split giving real images and prompts for validation metrics")
    metrics_allow_random_weights: bool = _f(False, "allow random feature-extractor weights in metrics (tests only)")
    metrics_weights_path: str | None = _f(None, "feature-extractor weights file for the metrics")
    keep_best: str | None = _f(None, "keep the best checkpoint by this validation metric in OUTPUT_DIR/best")
    final_reload_check: bool = _f(True, "reload the saved artefact on a fresh pipeline and compare one image; a "
                                        "mismatch fails the run and marks the artefact unpublishable")
    allow_reload_mismatch: bool = _f(False, "a failed final reload check is only a warning (the summary still records it)")
    report_to: str = _f("none", f"experiment tracker, one of {REPORT_TO}", choices=REPORT_TO, diffusers=True)
    logging_dir: str = _f("logs", "tracker log folder, relative to --output-dir", diffusers=True)
    # --- DreamBooth prior preservation (any method)
    instance_prompt: str | None = _f(None, "DreamBooth: one prompt for every training image (default: the dataset's prompts)",
                                     diffusers=True)
    class_prompt: str | None = _f(None, "DreamBooth prior preservation: class prompt (enables the prior loss)", diffusers=True)
    class_data_dir: str | None = _f(None, "DreamBooth: folder of class images (generated by the base model if short)",
                                    diffusers=True)
    num_class_images: int = _f(100, "DreamBooth: number of class images", diffusers=True)
    prior_loss_weight: float = _f(1.0, "DreamBooth: weight of the prior-preservation loss", diffusers=True)
    class_generation_steps: int = _f(25, "DreamBooth: sampler steps when generating class images")

    @property
    def data_source(self) -> str:
        """What the run trains on: ``--dataset`` or ``--train-data-dir``."""
        return self.dataset or str(self.train_data_dir)

    @property
    def base_load_kwargs(self) -> dict[str, str]:
        """``from_pretrained`` options for the base model: ``revision`` / ``variant`` when given."""
        return {k: v for k, v in (("revision", self.revision), ("variant", self.variant)) if v}

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
        if not self.pretrained_model:
            raise UserError("--pretrained-model is required: a diffusers folder, a hub id or phantom-base")
        if bool(self.dataset) == bool(self.train_data_dir):
            raise UserError("give exactly one of --dataset (a prepared dataset folder or hub id) and --train-data-dir "
                            "(a folder of images with captions)")
        if not self.output_dir:
            raise UserError("--output-dir is required: the new folder the run writes (weights, checkpoints, summary), "
                            "e.g. --output-dir runs/lora")
        if self.resolution <= 0 or self.resolution % 8:
            raise UserError(f"--resolution {self.resolution} is not a positive multiple of 8 (the VAE factor); use e.g. 512")
        for name in ("train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "num_validation_images"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("max_train_steps", "max_train_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.validation_steps > 0 and self.validation_epochs > 0:
            raise UserError("give --validation-steps or --validation-epochs, not both")
        if self.train_data_dir and self.validation_metrics_steps > 0:
            raise UserError("--validation-metrics-steps needs held-out real images: --train-data-dir trains on every "
                            "image; prepare the folder with `cxr-diffusion prepare --corpus folder` and pass --dataset")
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
        bad = sorted(set(self.validation_metrics) - set(VALIDATION_METRICS))
        if bad:
            raise UserError(f"--validation-metrics {bad} unknown; valid: {list(VALIDATION_METRICS)}")
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


#: ``--smoke``: the overrides that make any preset run a few seconds on CPU (a check that the setup works, not training)
SMOKE_OVERRIDES: dict[str, Any] = {
    "resolution": 64, "max_train_steps": 2, "max_train_samples": 2, "train_batch_size": 1,
    "gradient_accumulation_steps": 1, "checkpointing_steps": 0, "validation_steps": 0, "validation_epochs": 0,
    "validation_metrics_steps": 0,
    "keep_best": None, "num_validation_inference_steps": 2, "num_validation_images": 1, "num_class_images": 2,
    "class_generation_steps": 2,
}


def diffusers_flag(field: dataclasses.Field) -> str | None:
    """The spelling of ``field`` in diffusers' training examples (``--train_batch_size``), if it has a twin there."""
    twin = field.metadata.get("diffusers")
    if not twin:
        return None
    return f"--{field.name if twin is True else twin}"


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


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None, *, smoke: bool = False) -> TrainConfig:
    """YAML file (optional) merged with ``overrides`` (command-line values win; ``method_config`` merges by key).

    ``smoke`` applies :data:`SMOKE_OVERRIDES` last (64 px, 2 steps, 2 images, no checkpoints or validation metrics).
    """
    data = load_yaml(resolve_config(path)) if path is not None else {}  # a YAML path or a shipped preset name
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
    if smoke:
        data.update(SMOKE_OVERRIDES)
    return TrainConfig.from_dict(data, source=str(path) if path else "config")

