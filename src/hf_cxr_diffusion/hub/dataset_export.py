"""Export a synthetic dataset folder (``generate``) or a prepared corpus (``prepare``) as a dataset repo.

The data files are copied as they are (parquet shards, or ``images/`` + ``metadata.jsonl``), the
source card's YAML (``configs:``, ``dataset_info``) is kept so ``load_dataset(repo)`` reads the
same rows, and the card body is rendered from ``model_cards/``. The guard
(:mod:`hf_cxr_diffusion.hub.guard`) runs on exactly the files that will be uploaded.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from hf_cxr_diffusion.artefacts import (
    CARD_FILE,
    GENERATION_CONFIG_FILE,
    MANIFEST_FILE,
    PNG_PROVENANCE_KEY,
    PREPARE_INFO_FILE,
    REPORT_FILE,
    SKIPPED_FILE,
    find_report,
    read_manifest,
    read_report,
    write_manifest,
)
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hub import cards, guard, model_export
from hf_cxr_diffusion.hub.files import (
    copy_file,
    copy_json_without_local_paths,
    is_forbidden,
    read_json,
    without_local_paths,
)
from hf_cxr_diffusion.hub.reports import load_rows
from hf_cxr_diffusion.io import write_json_atomic

logger = logging.getLogger(__name__)

#: the memorisation report's copy in an export, when it is not the metrics report itself
MEMORISATION_FILE = "memorisation_report.json"
#: data folders / files copied into a dataset export (plus the bookkeeping files below)
DATA_ENTRIES: tuple[str, ...] = ("data", "images", "metadata.jsonl", "metadata.csv")
#: prepare_info.json entries shown as text on the card, not in its options table
_PREPARE_INFO_TEXT = frozenset({"corpus", "citation", "corpus_description", "homepage", "license_note", "data_use"})
METADATA_FILES: tuple[str, ...] = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
BOOKKEEPING: tuple[str, ...] = (GENERATION_CONFIG_FILE, MANIFEST_FILE, PREPARE_INFO_FILE, SKIPPED_FILE)


@dataclass
class DatasetCounts:
    """Rows per split and per class of a dataset's default config."""

    split_counts: Counter = field(default_factory=Counter)
    class_counts: Counter = field(default_factory=Counter)

    @property
    def num_rows(self) -> int:
        return sum(self.split_counts.values())


def dataset_kind(src: Path) -> str:
    """``"synthetic"`` (generation output) or ``"prepared"`` (prepare output)."""
    if (src / GENERATION_CONFIG_FILE).is_file():
        return "synthetic"
    if (src / PREPARE_INFO_FILE).is_file():
        return "prepared"
    raise UserError(
        f"{src} is neither a generation output (missing {GENERATION_CONFIG_FILE}) nor a prepare output "
        f"(missing {PREPARE_INFO_FILE}); `publish dataset` takes one of those folders"
    )


def _label_names(feature: Any) -> list[str] | None:
    while feature is not None and not hasattr(feature, "names"):
        feature = getattr(feature, "feature", None)
    return list(feature.names) if feature is not None else None


def _count_labels(counts: Counter, value: Any, names: list[str] | None) -> None:
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if item is None:
            continue
        counts[names[item] if names and isinstance(item, int) and 0 <= item < len(names) else str(item)] += 1


def count_rows(root: Path, src: Path) -> DatasetCounts:
    """Stream the default config of ``root`` (the export of ``src``; images not decoded): rows per split and class."""
    import datasets
    from tqdm.auto import tqdm

    try:
        splits = datasets.load_dataset(str(root), streaming=True)
    except Exception as err:  # datasets raises many types for unreadable folders
        raise UserError(f"`datasets.load_dataset` cannot read the data files of {src}: {err}") from err
    counts = DatasetCounts()
    for split, ds in splits.items():
        features = ds.features or {}
        if "image" in features:
            ds = ds.cast_column("image", datasets.Image(decode=False))
        label_column = next((c for c in ("labels", "label") if c in features), None)
        names = _label_names(features[label_column]) if label_column else None
        for row in tqdm(ds, desc=f"counting {split} rows", unit="row", leave=False):
            counts.split_counts[split] += 1
            if label_column:
                _count_labels(counts.class_counts, row.get(label_column), names)
    return counts


def _config_patterns(configs: Any) -> list[str]:
    """Every ``data_files`` path pattern of a card's ``configs:`` (string, list, or split -> path forms)."""
    patterns: list[str] = []

    def add(value: Any) -> None:
        if isinstance(value, str):
            patterns.append(value)
        elif isinstance(value, list):
            for item in value:
                add(item.get("path") if isinstance(item, dict) else item)
        elif isinstance(value, dict):
            for item in value.values():
                add(item)

    for config in configs if isinstance(configs, list) else []:
        if isinstance(config, dict):
            add(config.get("data_files"))
    return patterns


def data_files(src: Path) -> list[str]:
    """The data files of ``src``: those its card's ``configs:`` reference (plus imagefolder metadata
    files beside them), else :data:`DATA_ENTRIES`. Files the card does not reference (e.g. the
    generator's ``images/`` when the parquet shards hold the same PNGs) are left out."""
    patterns = _config_patterns(_source_metadata(src).get("configs"))
    if patterns:
        files = {p for pat in patterns for p in src.glob(pat) if p.is_file()}
        folders = {parent for f in files for parent in f.relative_to(src).parents}
        files |= {src / d / m for d in folders for m in METADATA_FILES if (src / d / m).is_file()}
    else:
        entries = [src / name for name in DATA_ENTRIES]
        files = {p for e in entries for p in ([e] if e.is_file() else e.rglob("*")) if p.is_file()}
        files |= set(src.glob("*.parquet"))
    rels = sorted(f.relative_to(src).as_posix() for f in files)
    if not rels:
        raise UserError(f"{src} has no data files: expected data/*.parquet, or images/ with metadata.jsonl, "
                        "or files matching its card's configs: data_files")
    return [rel for rel in rels if not is_forbidden(rel)]


def _copy_data(src: Path, dst: Path, report: Path | None, memorisation_report: Path | None) -> tuple[list[str], Path | None]:
    """Copy data, bookkeeping files and the reports (all read through the one report schema).

    Returns the data files copied and the source memorisation report (``memorisation_report``,
    else the metrics report when it holds a memorisation result)."""
    files = data_files(src)
    left_out = sum(1 for p in src.rglob("*") if p.is_file()) - len(files)
    for rel in files + [n for n in (*BOOKKEEPING, CARD_FILE) if (src / n).is_file()]:
        copy_file(src / rel, dst / rel)
    logger.info("exporting %d data file(s) of %s; %d other file(s) left out", len(files), src, left_out)
    report = report if report is not None else find_report(src)
    for given in (report, memorisation_report):
        if given is not None and not Path(given).is_file():
            raise UserError(f"report {given} does not exist")
    if report is not None:
        copy_json_without_local_paths(report, dst / REPORT_FILE)
    if memorisation_report is None and report is not None and "memorisation" in read_report(report).metrics:
        memorisation_report = report
    if memorisation_report is not None and memorisation_report != report:
        copy_json_without_local_paths(memorisation_report, dst / MEMORISATION_FILE)
    return files, memorisation_report


def _png_with_text(data: bytes, key: str, value: str) -> bytes:
    """PNG bytes with the ``tEXt`` chunk ``key`` set to ``value`` (pixel data untouched, CRC recomputed)."""
    import struct
    import zlib

    out, pos = [data[:8]], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos : pos + 12 + length]
        if kind == b"tEXt" and data[pos + 8 : pos + 8 + length].split(b"\0", 1)[0] == key.encode("latin-1"):
            body = key.encode("latin-1") + b"\0" + value.encode("latin-1")
            chunk = struct.pack(">I4s", len(body), kind) + body + struct.pack(">I", zlib.crc32(kind + body))
        out.append(chunk)
        pos += 12 + length
    return b"".join(out)


def _provenance_without_local_paths(data: bytes) -> bytes:
    """A generated PNG's bytes with local paths dropped from its provenance chunk (the guard checked it already)."""
    with Image.open(io.BytesIO(data)) as img:
        record = json.loads(img.text[PNG_PROVENANCE_KEY])
    return _png_with_text(data, PNG_PROVENANCE_KEY, json.dumps(without_local_paths(record), sort_keys=True))


def _without_local_paths(src: Path, dst: Path, files: list[str]) -> None:
    """Drop local paths from a synthetic export: the generation config (and the manifest's hash of it, through
    the manifest's own writer), the parquet columns and every image's provenance chunk; pixels untouched."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    config = read_json(dst / GENERATION_CONFIG_FILE)
    clean = without_local_paths(config)
    if clean == config:
        return
    entries = list(read_manifest(src).images.values())
    write_json_atomic(dst / GENERATION_CONFIG_FILE, clean)
    write_manifest(dst, clean, entries)
    for rel in (f for f in files if f.endswith(".parquet")):
        table = pq.read_table(dst / rel)
        rows = [without_local_paths({k: v for k, v in row.items() if k != "image"}) for row in table.to_pylist()]
        for name in table.column_names:
            if name == "image":
                images = [{"bytes": _provenance_without_local_paths(img["bytes"]), "path": None}
                          for img in table.column("image").to_pylist()]
                column = pa.array(images, type=table.schema.field(name).type)
            else:
                column = pa.array([row[name] for row in rows], type=table.schema.field(name).type)
            table = table.set_column(table.schema.get_field_index(name), name, column)
        pq.write_table(table, dst / rel)
    logger.info("dropped local paths from %s's generation config, rows and provenance chunks", src)


def _source_metadata(folder: Path) -> dict[str, Any]:
    from huggingface_hub import DatasetCard

    if not (folder / CARD_FILE).is_file():
        return {}
    return DatasetCard.load(folder / CARD_FILE).data.to_dict()


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def build_dataset_export(src: Path, dst: Path, *, repo_id: str, license: str, private: bool,
                         redistribution_rights: bool = False, allow_near_duplicates: bool = False,
                         report: Path | None = None, memorisation_report: Path | None = None,
                         training_data: str | None = None,
                         card_template: Path | None = None) -> None:
    """Copy, guard, and card a dataset folder into the empty folder ``dst``."""
    from huggingface_hub import DatasetCard, DatasetCardData

    kind = dataset_kind(src)
    if kind == "prepared" and not (private and redistribution_rights):
        raise UserError(
            f"{src} is a prepared corpus of real patient images: it can be published only as a private repo "
            "(no --public) and only with --i-have-redistribution-rights, if its data-use terms allow it"
        )
    files, memo = _copy_data(src, dst, report, memorisation_report)
    if kind == "synthetic":  # before anything parses the data
        guard.refuse_real_images(guard.scan_files(dst, files), src, rights=redistribution_rights)
        adapter_of_run = read_json(dst / GENERATION_CONFIG_FILE).get("adapter")
        _without_local_paths(src, dst, files)
    scan = count_rows(dst, src)
    if scan.num_rows == 0:
        raise UserError(f"{src} holds no rows; nothing to publish")
    metadata = _source_metadata(dst)
    metadata.update(
        license=license,
        tags=list(dict.fromkeys([*(metadata.get("tags") or []), "medical", "chest-x-ray", "hf-cxr-diffusion",
                                 "synthetic" if kind == "synthetic" else "real-images"])),
        task_categories=metadata.get("task_categories") or ["text-to-image", "image-classification"],
        size_categories=_size_category(scan.num_rows),
        pretty_name=metadata.get("pretty_name") or repo_id.split("/")[-1],
    )
    common = dict(repo_id=repo_id, split_counts=sorted(scan.split_counts.items()), license=license)
    if kind == "prepared":
        info = read_json(dst / PREPARE_INFO_FILE)
        corpus = str(info.get("corpus", "unknown corpus"))
        options = info.get("options") or {
            k: v for k, v in info.items() if k not in _PREPARE_INFO_TEXT and not isinstance(v, dict)
        }
        card = cards.render(
            DatasetCard, DatasetCardData(**metadata), cards.template_path("prepared_dataset", card_template),
            corpus=corpus, data_use=cards.corpus_data_use(info), prepare_options=cards.table_items(options),
            citation=info.get("citation"), homepage=info.get("homepage"), **common,
        )
    else:
        check = guard.check_memorisation(memo, n_images=scan.num_rows, allow=allow_near_duplicates)
        generation = read_json(dst / GENERATION_CONFIG_FILE)
        generation = generation if isinstance(generation, dict) else {}
        adapter = adapter_of_run  # the local folder, read before the export dropped local paths
        data_text, data_use, _ = model_export.describe_training_data(
            training_data or generation.get("training_data")
            or (model_export.training_data_of_folder(Path(adapter)) if adapter and Path(adapter).is_dir() else None)
        )
        _, rows = load_rows(dst)
        card = cards.render(
            DatasetCard, DatasetCardData(**metadata), cards.template_path("synthetic_dataset", card_template),
            num_images=scan.num_rows,
            class_counts=sorted(scan.class_counts.items(), key=lambda kv: (-kv[1], kv[0])),
            generation_parameters=cards.table_items(generation),
            provenance_columns=", ".join(f"`{c}`" for c in (*guard.PROVENANCE_COLUMNS, "adapter", "adapter_sha256")),
            evaluation=rows,
            random_weights=any(r.random_weights for r in rows),
            memorisation_summary=check.summary(),
            training_data=data_text,
            data_use=data_use,
            **common,
        )
    card.save(dst / CARD_FILE)


def validate_dataset_export(dst: Path) -> None:
    """The exported card parses and ``load_dataset(folder)`` yields a first row in every split."""
    import datasets
    from huggingface_hub import DatasetCard

    DatasetCard.load(dst / CARD_FILE)
    for split, ds in datasets.load_dataset(str(dst), streaming=True).items():
        if next(iter(ds), None) is None:
            raise UserError(f"exported split {split!r} of {dst} is empty")
