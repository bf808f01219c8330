"""The folders stages exchange: every file name, and the one reader / writer of each (torch-free).

``docs/design.md`` draws the flow; this module is its contract. Nothing else spells these file
names: the trainer and the methods write a *training output* through :func:`write_method_file`,
the generator a *synthetic dataset* (manifest through :func:`write_manifest`), the metrics a
*report* through :func:`write_report`; generation, the hub export and the cards read them back
through :func:`read_training_output`, :func:`read_manifest` and :func:`read_report`.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hashing import sha256_file, sha256_json
from hf_cxr_diffusion.io import write_json_atomic

CARD_FILE = "README.md"

# --------------------------------------------------------------------------- training output
#: ``{"method", "config", "base_model", "format", "trainable_parameters", "total_parameters"}``
METHOD_FILE = "cxr_method.json"
#: LoRA / DoRA / SeLoRA: diffusers' LoRA file (``pipe.load_lora_weights(folder)`` reads it)
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
#: BitFit / DiffFit: only the changed tensors, keys ``"<component>.<parameter name>"``
ADAPTER_FILE = "cxr_adapter.safetensors"
#: full fine-tunes: a complete diffusers pipeline folder
PIPELINE_INDEX_FILE = "model_index.json"
SUMMARY_FILE = "training_summary.json"
LOSS_CURVE_FILE = "loss_curve.png"
VALIDATION_DIR = "validation"
#: resumable training state (``checkpoint-<step>/``): never published, never hashed as weights
CHECKPOINT_PREFIX = "checkpoint-"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


class ArtefactKind(str, enum.Enum):
    """What a training output holds; the value is the ``format`` recorded in :data:`METHOD_FILE`."""

    LORA = "diffusers_lora"
    TENSORS = "cxr_adapter_safetensors"
    PIPELINE = "diffusers_pipeline"

    @property
    def weights_file(self) -> str:
        """The file whose presence makes a folder this kind of artefact."""
        return {ArtefactKind.LORA: LORA_WEIGHTS_FILE, ArtefactKind.TENSORS: ADAPTER_FILE}.get(self, PIPELINE_INDEX_FILE)


@dataclass(frozen=True)
class TrainingOutput:
    """A training output folder as :func:`read_training_output` found it."""

    path: Path
    kind: ArtefactKind
    #: None for a bare diffusers folder without :data:`METHOD_FILE`
    method: str | None
    config: dict[str, Any]
    base_model: str | None
    #: :func:`weights_sha256` of the folder
    sha256: str
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    #: ``training_summary.json`` ({} when absent)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        return self.path / self.kind.weights_file

    @property
    def is_adapter(self) -> bool:
        """Whether it is applied onto a base pipeline (everything but a full fine-tune)."""
        return self.kind is not ArtefactKind.PIPELINE


def write_method_file(
    output_dir: str | Path,
    *,
    method: str,
    config: Mapping[str, Any],
    base_model: str,
    kind: ArtefactKind | str,
    trainable_parameters: int,
    total_parameters: int,
) -> Path:
    """Write :data:`METHOD_FILE` (atomically) describing the artefact a method saved in ``output_dir``."""
    return write_json_atomic(
        Path(output_dir) / METHOD_FILE,
        {
            "method": method,
            "config": dict(config),
            "base_model": base_model,
            "format": kind.value if isinstance(kind, ArtefactKind) else str(kind),
            "trainable_parameters": int(trainable_parameters),
            "total_parameters": int(total_parameters),
        },
    )


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not a readable {what} ({err}); re-create it with the command that wrote it") from err


def weights_sha256(folder: str | Path) -> str:
    """sha256 of the one weight file of an adapter, or of the sorted ``"<relpath> <sha256>"`` lines
    of every weight file (full pipelines); ``checkpoint-*`` folders are ignored."""
    root = Path(folder)
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and p.suffix in _WEIGHT_SUFFIXES
        and not any(x.startswith(CHECKPOINT_PREFIX) for x in p.relative_to(root).parts)
    )  # fmt: skip
    if not files:
        raise UserError(f"{root} holds no weight file (*.safetensors / *.bin)")
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{p.relative_to(root).as_posix()} {sha256_file(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def _kind_of(folder: Path, recorded: str | None) -> ArtefactKind:
    if recorded:
        try:
            kind = ArtefactKind(recorded)
        except ValueError:
            valid = ", ".join(k.value for k in ArtefactKind)
            raise UserError(f"{folder / METHOD_FILE}: unknown format {recorded!r} (known: {valid})") from None
        if not (folder / kind.weights_file).is_file():
            raise UserError(f"{folder} is a {kind.value} training output but {kind.weights_file} is missing")
        return kind
    for kind in ArtefactKind:
        if (folder / kind.weights_file).is_file():
            return kind
    raise UserError(
        f"{folder} is not a training output folder: no {METHOD_FILE}, {LORA_WEIGHTS_FILE} or "
        f"{PIPELINE_INDEX_FILE}; pass the --output-dir of `cxr-diffusion train`"
    )


def read_training_output(path: str | Path, *, require_method_file: bool = True) -> TrainingOutput:
    """Classify and describe a training output folder (UserError naming what is missing or broken).

    With ``require_method_file=False`` a bare diffusers LoRA or pipeline folder (no
    :data:`METHOD_FILE`) is accepted too, with ``method`` and ``base_model`` None.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"training output folder {folder} does not exist")
    info: dict[str, Any] = {}
    if (folder / METHOD_FILE).is_file():
        info = _read_json(folder / METHOD_FILE, "method file")
        if not isinstance(info, dict) or not info.get("method"):
            raise UserError(f"{folder / METHOD_FILE} has no 'method' field; re-save the model with `cxr-diffusion train`")
    elif require_method_file:
        raise UserError(f"{folder} has no {METHOD_FILE}: not a folder written by `cxr-diffusion train`")
    summary = _read_json(folder / SUMMARY_FILE, "training summary") if (folder / SUMMARY_FILE).is_file() else {}
    counts = {k: info.get(k) if isinstance(info.get(k), int) else None for k in ("trainable_parameters", "total_parameters")}
    return TrainingOutput(
        path=folder,
        kind=_kind_of(folder, info.get("format")),
        method=str(info["method"]) if info else None,
        config=dict(info.get("config") or {}),
        base_model=str(info["base_model"]) if info.get("base_model") else None,
        sha256=weights_sha256(folder),
        summary=summary if isinstance(summary, dict) else {},
        **counts,
    )


# --------------------------------------------------------------------------- metrics report
REPORT_FILE = "report.json"
#: the report's Markdown table and bar chart, written next to it
REPORT_MARKDOWN_FILE, REPORT_CHART_FILE = "report.md", "report.png"
#: where a training output or synthetic dataset folder may hold the report of its evaluation
REPORT_LOCATIONS: tuple[str, ...] = (REPORT_FILE, f"evaluation/{REPORT_FILE}")
#: the closest synthetic/training pairs of the memorisation check, drawn next to the report
MEMORISATION_GRID_FILE = "memorisation_pairs.png"
REPORT_SCHEMA = "hf-cxr-diffusion/report"
REPORT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class MetricResult:
    """One metric of a report: its headline value and where the number comes from.

    ``value`` is None when it could not be computed (e.g. too few images); ``details`` holds the
    metric's full result (per-condition rows, similarities, ...).
    """

    name: str
    value: float | None
    higher_is_better: bool
    protocol: str
    weights: str | None = None
    random_weights: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "value": self.value, "higher_is_better": self.higher_is_better, "protocol": self.protocol,
            "weights": self.weights, "random_weights": self.random_weights, "details": self.details,
        }  # fmt: skip


@dataclass(frozen=True)
class Report:
    """An evaluation report: metric results by name plus the run's context (inputs, counts, ...)."""

    metrics: dict[str, MetricResult]
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def random_weights(self) -> bool:
        return any(m.random_weights for m in self.metrics.values())


def write_report(path: str | Path, report: Report) -> Path:
    """Write ``report`` as versioned JSON (atomically); NaN / inf values are refused, not written."""
    for m in report.metrics.values():
        if m.value is not None and not math.isfinite(m.value):
            raise ValueError(f"metric {m.name} has the non-finite value {m.value}; report None with a reason instead")
    payload = {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "metrics": {name: m.to_json() for name, m in report.metrics.items()},
        "context": report.context,
    }
    return write_json_atomic(path, payload)


def _metric(name: str, entry: Any, origin: Path) -> MetricResult:
    try:
        value = entry["value"]
        return MetricResult(
            name=name,
            value=None if value is None else float(value),
            higher_is_better=bool(entry["higher_is_better"]),
            protocol=str(entry["protocol"]),
            weights=entry.get("weights"),
            random_weights=bool(entry.get("random_weights", False)),
            details=dict(entry.get("details") or {}),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"report {origin}: metric {name!r} lacks value/higher_is_better/protocol ({err})") from err


def read_report(path: str | Path) -> Report:
    """Read a report written by :func:`write_report` (UserError for another file or schema version)."""
    origin = Path(path)
    data = _read_json(origin, "metrics report")
    if not isinstance(data, dict) or data.get("schema") != REPORT_SCHEMA:
        raise UserError(f"{origin} is not a report written by `cxr-diffusion evaluate` (no schema {REPORT_SCHEMA!r})")
    if data.get("schema_version") != REPORT_SCHEMA_VERSION:
        raise UserError(
            f"{origin} has report schema version {data.get('schema_version')!r}; this version reads "
            f"{REPORT_SCHEMA_VERSION}: re-run `cxr-diffusion evaluate`"
        )
    metrics = data.get("metrics")
    if not isinstance(metrics, dict):
        raise UserError(f"report {origin}: 'metrics' must be an object of metric name -> result")
    return Report({n: _metric(n, e, origin) for n, e in metrics.items()}, dict(data.get("context") or {}))


def find_report(folder: str | Path) -> Path | None:
    """The first of :data:`REPORT_LOCATIONS` present in ``folder``, else None."""
    return next((Path(folder) / rel for rel in REPORT_LOCATIONS if (Path(folder) / rel).is_file()), None)


# --------------------------------------------------------------------------- synthetic dataset
SYNTHETIC_IMAGES_DIR = "images"
SYNTHETIC_DATA_DIR = "data"
GENERATION_CONFIG_FILE = "generation_config.json"
#: sha256 of every image's pixels with its seed, prompt and adapter hash (see :func:`write_manifest`)
MANIFEST_FILE = "synthetic_manifest.json"
MANIFEST_SCHEMA_VERSION = 1
#: PNG text chunks of a generated image: ``synthetic`` = :data:`PNG_SYNTHETIC_VALUE` exactly,
#: ``provenance`` = JSON of the image's record
PNG_SYNTHETIC_KEY = "synthetic"
PNG_SYNTHETIC_VALUE = "true"
PNG_PROVENANCE_KEY = "provenance"


def synthetic_image_name(index: int) -> str:
    """``images/NNNNNN.png``: image ``index`` of a synthetic dataset folder, relative to it."""
    return f"{SYNTHETIC_IMAGES_DIR}/{index:06d}.png"


@dataclass(frozen=True)
class Manifest:
    """What a generation run made: the sha256 of its ``generation_config.json`` and one entry per image."""

    config_sha256: str
    #: ``pixel_sha256`` -> ``{"index", "file", "seed", "prompt", "adapter_sha256"}``
    images: dict[str, dict[str, Any]]


def write_manifest(out: str | Path, config: Mapping[str, Any], entries: list[dict[str, Any]]) -> Path:
    """Write :data:`MANIFEST_FILE`: ``config`` is the run's generation config, ``entries`` one dict per
    image with ``index``, ``pixel_sha256``, ``seed``, ``prompt`` and ``adapter_sha256``."""
    images = [{**e, "file": synthetic_image_name(int(e["index"]))} for e in sorted(entries, key=lambda e: e["index"])]
    return write_json_atomic(
        Path(out) / MANIFEST_FILE,
        {"schema_version": MANIFEST_SCHEMA_VERSION, "generation_config_sha256": sha256_json(dict(config)), "images": images},
    )


def read_manifest(out: str | Path) -> Manifest:
    """The manifest of a synthetic dataset folder, checked against its own ``generation_config.json``."""
    folder = Path(out)
    if not (folder / MANIFEST_FILE).is_file():
        raise UserError(f"{folder} has no {MANIFEST_FILE}: not a folder finished by `cxr-diffusion generate`")
    data = _read_json(folder / MANIFEST_FILE, "synthetic manifest")
    if not isinstance(data, dict) or data.get("schema_version") != MANIFEST_SCHEMA_VERSION:
        raise UserError(f"{folder / MANIFEST_FILE} is not a version {MANIFEST_SCHEMA_VERSION} manifest; re-run generate")
    config_file = folder / GENERATION_CONFIG_FILE
    config = _read_json(config_file, "generation config") if config_file.is_file() else None
    if config is None or sha256_json(config) != data.get("generation_config_sha256"):
        raise UserError(f"{folder / MANIFEST_FILE} does not belong to {config_file} (another run's manifest)")
    try:
        images = {str(e["pixel_sha256"]): dict(e) for e in data["images"]}
    except (KeyError, TypeError) as err:
        raise UserError(f"{folder / MANIFEST_FILE}: malformed image entry ({err}); re-run generate") from err
    return Manifest(str(data["generation_config_sha256"]), images)


# --------------------------------------------------------------------------- prepared dataset
PREPARE_INFO_FILE = "prepare_info.json"
SKIPPED_FILE = "skipped.csv"
PREPARED_DATA_DIR = "data"
PREPARED_PROMPTS_DIR = "prompts"


def shard_name(split: str, index: int, total: int) -> str:
    """``<split>-0000K-of-0000N.parquet``: the parquet shard names of prepared and synthetic datasets."""
    return f"{split}-{index:05d}-of-{total:05d}.parquet"
