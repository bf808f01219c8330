"""The study file: one YAML mapping naming the base model, the data, the methods and the protocol.

A study (the paradigm paper's 11 strategies, Tables 1/3/4; the SeLoRA paper's LoRA/DyLoRA/AdaLoRA/SeLoRA
comparison, its Table 1) is a list of methods, each a training preset (``configs/*.yaml``) plus overrides,
optionally swept over a ``grid``, repeated over ``seeds``, then sampled, scored and used to train a
classifier under one shared protocol. :func:`load_study` reads and checks the file;
:meth:`StudyConfig.runs` expands methods x grid x seeds into named :class:`Run` objects.

Example (the keys of every section are the fields of the dataclasses below)::

    base_model: phantom-base
    phantoms: {n: 600, seed: 0}          # or  dataset: path/to/prepared
    conditions: [No Finding, Cardiomegaly]
    seeds: [0]
    train: {resolution: 64, max_train_steps: 100}
    methods:
      - {name: lora, preset: paradigm-08-lora, grid: {rank: [4, 8]}}
      - {name: bitfit, preset: paradigm-10-bitfit}
    generation: {per_condition: 8, steps: 10}
    evaluation: {feature_model: phantom}
    utility: {arch: small-cnn, epochs: 3, image_size: 64}
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any

import yaml

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hashing import sha256_file

#: the repository's preset folder (``configs/``), where bare preset names are looked up
PRESET_DIR = Path(__file__).resolve().parents[3] / "configs"
#: the untuned base model's run (generate -> evaluate -> utility, no training): the tables' reference row
BASE_RUN = "base"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _section(cls: type, data: Any, where: str) -> Any:
    """``cls(**data)`` with unknown keys named (a section of the study file)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping, got {type(data).__name__}")
    clean = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(clean) - _fields(cls))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(_fields(cls))}")
    return cls(**clean)


@dataclasses.dataclass
class PhantomData:
    """Build the study's dataset from phantoms (``make-phantoms`` + ``prepare``) instead of naming one."""

    n: int = 600
    seed: int = 0
    resolution: int = 64
    balance: bool = True


@dataclasses.dataclass
class GenerationSpec:
    """Sampling shared by every run: ``per_condition`` images per condition, image i at seed ``seed + i``."""

    per_condition: int = 8
    steps: int = 20
    guidance: float = 4.0
    scheduler: str = "dpm"
    batch_size: int = 8
    dtype: str = "fp32"


@dataclasses.dataclass
class EvaluationSpec:
    """Metrics of every run against the real ``test`` split (options: :class:`~hf_cxr_diffusion.metrics.api.EvalOptions`)."""

    feature_model: str = "xrv"
    metrics: list = dataclasses.field(default_factory=lambda: ["fid", "vendi", "class_consistency"])
    batch_size: int = 64
    max_real: int | None = None
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class UtilitySpec:
    """The paradigm paper's Table 4: a classifier trained on synthetic images only, tested on real ones."""

    experiments: str = "synth-only"
    label_mode: str = "multiclass"
    arch: str = "densenet121"
    epochs: int = 20
    image_size: int = 224
    lr: float = 1e-4
    batch_size: int = 64
    pretrained: bool = True


@dataclasses.dataclass
class MethodSpec:
    """One method of the study: a training preset, overrides (``TrainConfig`` fields or ``method_config`` keys), a grid."""

    name: str
    preset: str
    overrides: dict = dataclasses.field(default_factory=dict)
    grid: dict = dataclasses.field(default_factory=dict)
    label: str = ""


@dataclasses.dataclass(frozen=True)
class Run:
    """One job of the study: a method at one grid point and seed (``DIR/<name>/``)."""

    name: str
    method: str
    label: str
    seed: int
    preset: Path | None
    overrides: tuple[tuple[str, Any], ...] = ()
    grid_point: tuple[tuple[str, Any], ...] = ()

    @property
    def is_base(self) -> bool:
        return self.preset is None


@dataclasses.dataclass
class StudyConfig:
    """A whole study (see the module docstring); ``source`` is the file it came from."""

    base_model: str
    conditions: list
    methods: list
    dataset: str = ""
    phantoms: PhantomData | None = None
    splits: dict = dataclasses.field(default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"})
    prompt: str = "Chest X-ray of a subject with {}"
    seeds: list = dataclasses.field(default_factory=lambda: [0])
    train: dict = dataclasses.field(default_factory=dict)
    generation: GenerationSpec = dataclasses.field(default_factory=GenerationSpec)
    evaluation: EvaluationSpec = dataclasses.field(default_factory=EvaluationSpec)
    utility: UtilitySpec | None = dataclasses.field(default_factory=UtilitySpec)
    include_base: bool = True
    name: str = "study"
    source: str = "study file"

    def identity(self) -> dict[str, Any]:
        """What makes two study folders the same study: every setting, and the content of each preset."""
        data = dataclasses.asdict(self)
        data.pop("source")
        data["preset_sha256"] = {m.name: sha256_file(resolve_preset(m.preset, self.source, m.name)) for m in self.methods}
        return data

    def train_config(self, run: Run, *, dataset: str, output_dir: str | Path) -> Any:
        """The run's :class:`~hf_cxr_diffusion.training.config.TrainConfig`: preset <- study ``train`` <- the
        method's overrides <- its grid point; keys that are not ``TrainConfig`` fields are ``method_config`` keys."""
        from hf_cxr_diffusion.training.config import TrainConfig, load_config, parse_method_config

        names = _fields(TrainConfig)
        overrides: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in (*self.train.items(), *run.overrides, *run.grid_point):
            key = str(key).replace("-", "_")
            if key == "method_config":
                extra.update(parse_method_config(value))
            elif key in names:
                overrides[key] = value
            else:
                extra[key] = value
        if extra:
            overrides["method_config"] = extra
        overrides.update(pretrained_model=self.base_model, dataset=dataset, dataset_split=self.splits["train"],
                         validation_split=self.splits["validation"], output_dir=str(output_dir), seed=run.seed)
        return load_config(run.preset, overrides).validate()

    def runs(self) -> list[Run]:
        """Every job, in study order: base (per seed), then each method x grid point x seed."""
        runs: list[Run] = []
        multi_seed = len(self.seeds) > 1
        if self.include_base:
            runs.extend(Run(f"{BASE_RUN}-s{s}" if multi_seed else BASE_RUN, BASE_RUN, "base model", s, None)
                        for s in self.seeds)
        for m in self.methods:
            preset = resolve_preset(m.preset, self.source, m.name)
            keys = list(m.grid)
            for values in itertools.product(*(m.grid[k] for k in keys)):
                point = tuple(zip(keys, values))
                for seed in self.seeds:
                    name = "-".join([m.name, *(f"{k}{_slug(v)}" for k, v in point)] + ([f"s{seed}"] if multi_seed else []))
                    runs.append(Run(name, m.name, m.label or m.name, int(seed), preset,
                                    tuple(sorted(m.overrides.items())), point))
        return runs


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", str(value)).strip("_")


def resolve_preset(preset: str, source: str, method: str) -> Path:
    """A preset path (relative to the study file, then the current folder) or a name in ``configs/``."""
    candidates = [Path(source).parent / preset, Path(preset), PRESET_DIR / preset, PRESET_DIR / f"{preset}.yaml"]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []
    raise UserError(f"{source}: method {method!r}: preset {preset!r} does not exist (not a file, nor one of "
                    f"{PRESET_DIR}: {', '.join(names) or 'none'}); give a YAML path or a preset name")


def _check_list(value: Any, where: str, *, kind: type = str) -> list:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, kind) for v in value):
        raise UserError(f"{where} must be a non-empty list of {kind.__name__}, got {value!r}")
    return value


def _methods(items: Any, source: str) -> list[MethodSpec]:
    if not isinstance(items, list) or not items:
        raise UserError(f"{source}: 'methods' must be a non-empty list of {{name, preset, overrides, grid}} entries")
    methods, seen = [], set()
    for i, item in enumerate(items):
        where = f"{source}: methods[{i}]"
        spec = _section(MethodSpec, item, where) if isinstance(item, dict) and "name" in item and "preset" in item else None
        if spec is None:
            raise UserError(f"{where} needs 'name' and 'preset' (got {item!r})")
        if not _NAME.match(str(spec.name)) or spec.name == BASE_RUN:
            raise UserError(f"{where}: name {spec.name!r} must be letters, digits, '.', '_' or '-' (not starting with "
                            f"one of the last three) and not {BASE_RUN!r}, the untuned model's row")
        if spec.name in seen:
            raise UserError(f"{source}: two methods are named {spec.name!r}; give each method a unique name")
        seen.add(spec.name)
        for key in ("overrides", "grid"):
            if not isinstance(getattr(spec, key), dict):
                raise UserError(f"{where}: {key!r} must be a mapping")
        for key, values in spec.grid.items():
            spec.grid[key] = _check_list(values, f"{where}: grid {key!r}", kind=object)
        resolve_preset(spec.preset, source, spec.name)
        methods.append(spec)
    return methods


def study_from_dict(data: dict[str, Any], source: str = "study file") -> StudyConfig:
    """Build and check a :class:`StudyConfig` from the study file's mapping."""
    if not isinstance(data, dict):
        raise UserError(f"{source} must hold a mapping, got {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    valid = _fields(StudyConfig) - {"source"}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise UserError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(valid)}")
    for key in ("base_model", "conditions", "methods"):
        if not data.get(key):
            raise UserError(f"{source}: {key!r} is required")
    if bool(data.get("dataset")) == bool(data.get("phantoms")):
        raise UserError(f"{source}: give exactly one of 'dataset' (a prepared dataset folder or hub id) and 'phantoms'")
    utility = data.get("utility", {})
    study = StudyConfig(
        **{k: v for k, v in data.items() if k not in ("phantoms", "generation", "evaluation", "utility", "methods")},
        methods=_methods(data["methods"], source),
        phantoms=_section(PhantomData, data["phantoms"], f"{source}: phantoms") if data.get("phantoms") else None,
        generation=_section(GenerationSpec, data.get("generation"), f"{source}: generation"),
        evaluation=_section(EvaluationSpec, data.get("evaluation"), f"{source}: evaluation"),
        utility=None if utility is None else _section(UtilitySpec, utility, f"{source}: utility"),
        source=source,
    )
    study.conditions = _check_list(study.conditions, f"{source}: conditions")
    if len(set(study.conditions)) != len(study.conditions):
        raise UserError(f"{source}: conditions {study.conditions} repeat a condition")
    study.seeds = _check_list(study.seeds, f"{source}: seeds", kind=int)
    if "{}" not in study.prompt:
        raise UserError(f"{source}: prompt {study.prompt!r} needs a '{{}}' where the condition goes")
    for key, value in (("generation.per_condition", study.generation.per_condition), ("generation.steps", study.generation.steps)):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{source}: {key} must be a positive integer, got {value!r}")
    if not isinstance(study.train, dict):
        raise UserError(f"{source}: 'train' must be a mapping of TrainConfig options")
    return study


def load_study(path: str | Path) -> StudyConfig:
    """Read and check the study file ``path`` (YAML)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"study file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"study file {path} is not valid YAML: {err}") from err
    return study_from_dict(data, source=str(path))


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings (``methods[1].grid.rank``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b), key=str)
                for k in differing_keys(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [k for i, (x, y) in enumerate(zip(a, b)) for k in differing_keys(x, y, f"{prefix}[{i}]")]
    return [] if a == b else [prefix or "(root)"]
