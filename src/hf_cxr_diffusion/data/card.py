"""Write a prepared dataset folder: parquet shards (``data/`` with images, ``prompts/`` without), the
dataset card (README.md with YAML ``configs:`` so ``load_dataset(folder)`` needs no code), ``prepare_info.json``
and ``skipped.csv``. The folder is built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from hf_cxr_diffusion.artefacts import (
    CARD_FILE, PREPARE_INFO_FILE, PREPARED_DATA_DIR, PREPARED_PROMPTS_DIR, SKIPPED_FILE, shard_name,
)
from hf_cxr_diffusion import runs
from hf_cxr_diffusion.data.splits import SPLITS
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import atomic_path, check_replaceable, write_json_atomic, write_text_atomic

#: every top-level entry a prepared dataset folder may hold (what ``--overwrite`` may replace)
OWNED = frozenset({PREPARED_DATA_DIR, PREPARED_PROMPTS_DIR, PREPARE_INFO_FILE, SKIPPED_FILE, CARD_FILE})


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


class ConfigStats:
    """Features, per-split rows/bytes and parquet bytes of one config, for the card's ``dataset_info``.

    Exact sizes also make the card differ between two prepared folders, which matters: ``datasets``
    caches a local folder under its base name and card metadata, not its file contents.
    """

    def __init__(self) -> None:
        self.features = None
        self.splits: dict[str, list[int]] = {}
        self.download_size = 0

    def add(self, split: str, ds, parquet: Path) -> None:
        self.features = ds.features
        rows_bytes = self.splits.setdefault(split, [0, 0])
        rows_bytes[0] += len(ds)
        rows_bytes[1] += int(ds.data.nbytes)
        self.download_size += parquet.stat().st_size

    def yaml(self, name: str) -> dict[str, Any]:
        return {
            "config_name": name,
            "features": self.features._to_yaml_list(),
            "splits": [{"name": s, "num_bytes": b, "num_examples": n} for s, (n, b) in self.splits.items()],
            "download_size": self.download_size,
            "dataset_size": sum(b for _, b in self.splits.values()),
        }


def card_metadata(info: dict[str, Any], stats: dict[str, ConfigStats]) -> dict[str, Any]:
    """The YAML header: one ``default`` config (images) and one ``prompts`` config (text and labels only)."""
    splits = [s for s in SPLITS if info["num_rows"].get(s)]
    folders = {"default": PREPARED_DATA_DIR, "prompts": PREPARED_PROMPTS_DIR if "prompts" in stats else PREPARED_DATA_DIR}
    configs = [{"config_name": name, "data_files": [{"split": s, "path": f"{folder}/{s}-*"} for s in splits]}
               for name, folder in folders.items()]
    configs[0]["default"] = True
    return {
        "configs": configs,
        "dataset_info": [stats.get(name, stats["default"]).yaml(name) for name in folders],
        "license": "other",
        "pretty_name": f"{info['corpus']} chest X-rays with prompts (hf-cxr-diffusion)",
        "tags": ["medical", "chest-x-ray", "text-to-image", "hf-cxr-diffusion", info["corpus"]],
        "task_categories": ["text-to-image", "image-classification"],
        "size_categories": [_size_category(sum(info["num_rows"].values()))],
    }


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_card(info: dict[str, Any], stats: dict[str, ConfigStats]) -> str:
    """The dataset card text (YAML header + Markdown) of a prepared folder."""
    has_images = "prompts" in stats
    header = yaml.safe_dump(card_metadata(info, stats), sort_keys=False, allow_unicode=True)
    splits = [s for s in SPLITS if info["num_rows"].get(s)]
    counts = _table(["label"] + splits, [[n] + [info["label_counts"][s][n] for s in splits] for n in info["label_names"]])
    sizes = _table(["split", "images"], [[s, info["num_rows"][s]] for s in splits])
    notes = (f"\n**{info['skipped']} image(s) listed by the corpus were skipped** (missing, unreadable, too large, "
             f"without caption or repeated rows); they are listed with the reason in `{SKIPPED_FILE}`.\n" if info["skipped"] else "")
    duplicates = info.get("duplicates", 0)
    if duplicates:
        kept = "kept (`--on-duplicate keep`)" if info.get("on_duplicate") == "keep" else f"dropped (listed in `{SKIPPED_FILE}`)"
        notes += f"\n**{duplicates} row(s) listed an image already listed**; the repeats were {kept}.\n"
    if info.get("empty_splits"):
        notes += f"\n**Empty split(s): {', '.join(info['empty_splits'])}** (no images after filtering and skipping).\n"
    images = f"{info['resolution']}x{info['resolution']} 8-bit grayscale PNG" if has_images else "none (prompts only)"
    return f"""---
{header}---

# {info['corpus']} chest X-rays with text prompts

{info.get('corpus_description', '')}

Prepared with hf-cxr-diffusion `cxr-diffusion prepare` {info.get('hf_cxr_diffusion_version', '')}.
Source: {info.get('homepage') or 'user-supplied folder'}.

## Licence and data use

{info.get('license_note', '')} This prepared copy inherits the terms of the source corpus; check them before
sharing it (several corpora forbid redistribution, so push such datasets to a **private** repo only).

## Contents

- images: {images}, resized on the short side and centre-cropped (no distortion)
- prompt template: `{info['template_format']}` (`{info['template']}`), cut at a word boundary to 77 CLIP tokens
- uncertain labels: U-{info['uncertain'].capitalize()}; views: {info['views']}; split: {info['splits']} (patient-disjoint by sha256 of the patient id where no official split exists)
- columns: `image`, `prompt`, `labels` (positive findings, ClassLabel ids), `uncertain` (U-Ignore mask), `patient_id`, `study_id`,
  `view`, `projection`, `sex`, `age`, `report`, `split`, `source_path`, `corpus`
{notes}
{sizes}

### Positive images per label

{counts}

## Usage

```python
from datasets import load_dataset
ds = load_dataset("path/or/repo")               # images + prompts
prompts = load_dataset("path/or/repo", "prompts")  # text and labels only
from hf_cxr_diffusion.data.labels import multi_hot
y = multi_hot(ds["train"][0]["labels"], {len(info['label_names'])})
```

## Citation

{info.get('citation', '')}
"""


def _claim_output_dir(out: Path, identity: runs.RunIdentity, overwrite: bool) -> dict[str, Any]:
    """The run record of the folder about to be written (lock held). ``out`` may be new, empty, or a prepared
    dataset folder and nothing else: the same run's (written again), or, with ``overwrite``, any."""
    entries = [p.name for p in out.iterdir() if p.name not in runs.RECORD_ENTRIES]
    if entries and runs.read_record(out) is None:
        if not overwrite:
            raise UserError(f"output folder {out} is not empty; choose an empty --output-dir or pass --overwrite")
        if not (out / PREPARE_INFO_FILE).is_file():
            raise UserError(f"--output-dir {out} is not a prepared dataset (no {PREPARE_INFO_FILE}); --overwrite only "
                            "replaces what `cxr-diffusion prepare` wrote: choose another --output-dir")
    if entries:  # the folder is swapped whole: nothing but a prepared dataset's entries may be in it
        check_replaceable(out, OWNED | set(runs.RECORD_ENTRIES), what="a prepared dataset")
    record, _ = runs.plan_claim(out, identity, owned=OWNED.__contains__, overwrite=overwrite, resuming=None,
                                may_change=runs.PREPARE_RESUMABLE)
    return record


@contextlib.contextmanager
def _quiet_datasets():
    """Hide datasets' per-shard "Creating parquet" bars (our own tqdm bar shows progress)."""
    from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            ds_logging.enable_progress_bar()


def write_folder(output_dir: str | os.PathLike, shards: Iterable[tuple[str, int, int, Any]], *,
                 info_fn: Callable[[dict[str, list]], dict[str, Any]], skipped: list[dict[str, str]],
                 identity: runs.RunIdentity, overwrite: bool = False) -> Path:
    """Write ``(split, index, total, Dataset)`` shards and the card/info files atomically into ``output_dir``, with
    the run record of ``identity`` (:mod:`hf_cxr_diffusion.runs`), holding the folder's lock meanwhile."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder; choose another --output-dir")
    created = not out.exists()
    try:
        with runs.OutputLock(out, "prepare"):
            record = _claim_output_dir(out, identity, overwrite)
            runs.remove_stale_temporaries(out.parent, out.name.__eq__)  # a killed prepare's half-built folder
            _write(out, shards, info_fn, skipped, record)
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # refused or failed before anything was written: leave no empty folder behind
    return out


def _write(out: Path, shards: Iterable[tuple[str, int, int, Any]], info_fn: Callable[[dict[str, list]], dict[str, Any]],
           skipped: list[dict[str, str]], record: dict[str, Any]) -> None:
    written: dict[str, list] = {}
    stats: dict[str, ConfigStats] = {}
    with atomic_path(out) as tmp, _quiet_datasets():
        (tmp / PREPARED_DATA_DIR).mkdir(parents=True)
        for split, index, total, ds in shards:
            name = shard_name(split, index, total)
            ds.to_parquet(str(tmp / PREPARED_DATA_DIR / name))
            stats.setdefault("default", ConfigStats()).add(split, ds, tmp / PREPARED_DATA_DIR / name)
            text = ds
            if "image" in ds.column_names:
                text = ds.remove_columns("image")
                (tmp / PREPARED_PROMPTS_DIR).mkdir(exist_ok=True)
                text.to_parquet(str(tmp / PREPARED_PROMPTS_DIR / name))
                stats.setdefault("prompts", ConfigStats()).add(split, text, tmp / PREPARED_PROMPTS_DIR / name)
            written.setdefault(split, []).append(text)
        info = info_fn(written)
        write_json_atomic(tmp / PREPARE_INFO_FILE, info)
        if skipped:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=["source_path", "split", "reason"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(skipped)
            write_text_atomic(tmp / SKIPPED_FILE, buf.getvalue())
        write_text_atomic(tmp / CARD_FILE, render_card(info, stats))
        write_json_atomic(tmp / runs.RUN_FILE, record)
