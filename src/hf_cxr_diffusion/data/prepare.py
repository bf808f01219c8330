"""Records -> ``datasets.DatasetDict`` -> Hub-ready dataset folder (parquet shards + card).

``prepare_dataset`` builds the dataset in memory (no output written); ``save_dataset_folder`` writes a
DatasetDict as a folder; ``prepare`` does both while streaming shard by shard, so memory stays
bounded by one shard; ``prepare_iterable`` / ``iter_records`` are the lazy paths for corpora too big
for memory (MIMIC-CXR-JPG: 377k images). See docs/design.md for the folder contract.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from hf_cxr_diffusion.data.corpora import Corpus, CorpusTable, Record, get_corpus
from hf_cxr_diffusion.data.corpora.base import check_paths
from hf_cxr_diffusion.data.images import process_image
from hf_cxr_diffusion.data.labels import apply_policy, check_policy
from hf_cxr_diffusion.data.prompts import UNKNOWN, findings_text, normalise_whitespace, render, resolve_template, template_fields
from hf_cxr_diffusion.data.splits import SPLITS, assign_splits, check_fractions
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import check_output_location

logger = logging.getLogger(__name__)

ON_MISSING: tuple[str, ...] = ("error", "skip")
VIEWS: tuple[str, ...] = ("frontal", "lateral")
DEFAULT_SHARD_ROWS = 1000
_TEXT_COLUMNS = ("prompt", "patient_id", "study_id", "view", "projection", "sex", "report", "split", "source_path", "corpus")


def dataset_features(label_names: Sequence[str], *, images: bool = True):
    """The ``datasets.Features`` of a prepared dataset (``images=False``: the ``prompts`` config)."""
    from datasets import ClassLabel, Features, Image, List, Value

    cols: dict[str, Any] = {"image": Image()} if images else {}
    cols["prompt"] = Value("string")
    cols["labels"] = List(ClassLabel(names=list(label_names)))
    cols["uncertain"] = List(ClassLabel(names=list(label_names)))
    for name in _TEXT_COLUMNS[1:]:
        cols[name] = Value("string")
    cols["age"] = Value("int32")
    return Features(cols)


@dataclass
class Plan:
    """Everything known before images are decoded: one metadata row per image, plus what was skipped."""

    corpus: Corpus
    table: CorpusTable
    rows: pd.DataFrame
    options: dict[str, Any]
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.table.label_names


def _select_views(table: CorpusTable, views: Sequence[str] | str | None) -> CorpusTable:
    if views is None or views == "all" or tuple(views) == ("all",):
        return table
    views = (views,) if isinstance(views, str) else tuple(views)
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise UserError(f"unknown view(s) {', '.join(unknown)}; use --views with {', '.join(VIEWS)} or all")
    known = table.frame["view"]
    if (known == "").all():
        logger.info("corpus %s has no view information; --views %s not applied", table.corpus, ",".join(views))
        return table
    keep = known.isin(views).to_numpy()
    if not keep.any():
        present = known.replace("", "unknown").value_counts().to_dict()
        raise UserError(f"no rows left after --views {','.join(views)} (views in the corpus: {present}); "
                        "choose other --views")
    return table.subset(keep)


def plan_dataset(
    corpus: str | Corpus,
    data_dir: str | os.PathLike,
    *,
    template: str | None = None,
    uncertain: str = "ones",
    views: Sequence[str] | str | None = ("frontal",),
    splits: str = "auto",
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    split_salt: str = "",
    limit: int | None = None,
    tokenizer=None,
) -> Plan:
    """Read a corpus and compute labels, prompts and splits for every image (vectorised; no image I/O)."""
    reader = get_corpus(corpus) if isinstance(corpus, str) else corpus
    check_policy(uncertain)
    check_fractions(split_fractions)
    needs_report = "report" in template_fields(resolve_template(template or reader.default_template))
    table = reader.read(Path(data_dir), reports=needs_report)
    template = template or reader.default_template_for(table)
    fmt = resolve_template(template)
    table.frame["path"] = check_paths(table.frame, table.root)
    table = _select_views(table, views)
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit must be a positive number of images, got {limit}")
        table = table.subset(np.arange(min(limit, len(table))))
    if len(table) == 0:
        raise UserError(f"corpus {reader.name} in {data_dir} has no images listed; check --data-dir")
    frame = table.frame
    labels = apply_policy(table.values, table.label_names, uncertain, no_finding_exempt=reader.no_finding_exempt)
    findings = findings_text(labels.positive, table.label_names)
    text = {
        "findings": findings,
        "age": frame["age"].astype("string").fillna(UNKNOWN).reset_index(drop=True),
        "sex": frame["sex"].replace("", UNKNOWN).reset_index(drop=True),
        "view": frame["view"].replace("", UNKNOWN).reset_index(drop=True),
        "report": normalise_whitespace(frame["report"]).reset_index(drop=True),
        "label": frame["label"].str.replace("|", ", ", regex=False).where(frame["label"] != "", findings.to_numpy())
        .reset_index(drop=True),
    }
    prompts = render(fmt, {k: text[k] for k in template_fields(fmt)}, tokenizer=tokenizer)
    empty = int((prompts == "").sum())
    if empty:
        logger.warning("%d image(s) get an empty prompt with template %r (e.g. no report text)", empty, template)
    rows = pd.DataFrame({
        "prompt": prompts.to_numpy(),
        "labels": labels.ids("positive"),
        "uncertain": labels.ids("uncertain"),
        "patient_id": frame["patient_id"].to_numpy(),
        "study_id": frame["study_id"].to_numpy(),
        "view": frame["view"].to_numpy(),
        "projection": frame["projection"].to_numpy(),
        "sex": frame["sex"].to_numpy(),
        "age": [None if pd.isna(a) else int(a) for a in frame["age"]],
        "report": text["report"].to_numpy(),
        "split": assign_splits(frame, splits, split_fractions, salt=split_salt).to_numpy(),
        "source_path": frame["path"].to_numpy(),
        "corpus": reader.name,
    })
    options = {
        "corpus": reader.name, "template": template, "template_format": fmt, "uncertain": uncertain,
        "views": "all" if views in (None, "all") else list((views,) if isinstance(views, str) else views),
        "splits": splits, "split_fractions": list(split_fractions), "split_salt": split_salt, "limit": limit,
        "empty_prompts": empty,
    }
    return Plan(reader, table, rows, options)


def _skip_or_raise(plan: Plan, bad: list[tuple[int, str]], on_missing: str) -> np.ndarray:
    """Record bad rows (position, reason) as skipped, or raise naming the first ones; returns the kept mask."""
    keep = np.ones(len(plan.rows), dtype=bool)
    if not bad:
        return keep
    if on_missing == "error":
        first = ", ".join(f"{plan.table.root / plan.rows['source_path'].iat[i]} ({why})" for i, why in bad[:5])
        raise UserError(f"{len(bad)} image(s) listed by the corpus are missing or unreadable, first: {first}; "
                        "fix the data folder or pass --on-missing skip (they are then listed in skipped.csv)")
    for i, why in bad:
        keep[i] = False
        row = plan.rows.iloc[i]
        plan.skipped.append({"source_path": row["source_path"], "split": row["split"], "reason": why})
    logger.warning("skipping %d image(s) (missing or unreadable); listed in skipped.csv", len(bad))
    return keep


def check_on_missing(on_missing: str) -> str:
    if on_missing not in ON_MISSING:
        raise UserError(f"unknown --on-missing {on_missing!r}; use one of {', '.join(ON_MISSING)}")
    return on_missing


def check_files(plan: Plan, on_missing: str = "error") -> Plan:
    """Drop (``skip``) or report (``error``) rows whose image file does not exist."""
    check_on_missing(on_missing)
    root = plan.table.root
    exists = np.fromiter((os.path.isfile(root / p) for p in plan.rows["source_path"]), dtype=bool, count=len(plan.rows))
    keep = _skip_or_raise(plan, [(int(i), "missing") for i in np.flatnonzero(~exists)], on_missing)
    if not keep.all():
        plan.rows = plan.rows[keep].reset_index(drop=True)
        plan.table = plan.table.subset(keep)
    if plan.rows.empty:
        raise UserError(f"all listed images are missing under {root}; check --data-dir")
    return plan


class ImageEncoder:
    """Decode + resize + PNG-encode images in order, in this process or a pool of ``num_proc`` processes."""

    def __init__(self, resolution: int, num_proc: int = 1) -> None:
        if resolution < 8:
            raise UserError(f"--resolution must be at least 8 pixels, got {resolution}")
        self.resolution, self.num_proc = resolution, max(1, int(num_proc))
        self._pool = None

    def __enter__(self) -> ImageEncoder:
        if self.num_proc > 1:
            self._pool = multiprocessing.get_context("spawn").Pool(self.num_proc)
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is None:
            return
        if exc[0] is None:
            self._pool.close()
        else:
            self._pool.terminate()
        self._pool.join()

    def encode(self, paths: Sequence[Path]) -> list[tuple[bytes | None, str | None]]:
        jobs = [(str(p), self.resolution) for p in paths]
        if self._pool is None:
            return [process_image(j) for j in jobs]
        return self._pool.map(process_image, jobs, chunksize=max(1, len(jobs) // (4 * self.num_proc)))


def _shard_dataset(plan: Plan, rows: pd.DataFrame, images: list[bytes] | None):
    """Rows (+ PNG bytes) -> ``datasets.Dataset``, built column-wise in Arrow (no per-row feature encoding)."""
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo
    from datasets.fingerprint import generate_random_fingerprint
    from datasets.table import InMemoryTable

    features = dataset_features(plan.label_names, images=images is not None)
    schema = features.arrow_schema
    columns = {}
    for name in features:
        if name == "image":
            values = [{"bytes": b, "path": None} for b in images]
        elif name == "age":
            values = rows["age"].tolist()
        else:
            values = rows[name].tolist()
        columns[name] = pa.array(values, type=schema.field(name).type)
    table = pa.Table.from_pydict(columns, schema=schema)
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=features), fingerprint=generate_random_fingerprint())


def label_counts(ds, n_labels: int) -> np.ndarray:
    """Positive images per label id of a prepared dataset (Arrow, no Python loop over rows)."""
    import pyarrow.compute as pc

    labels = ds.select_columns(["labels"]).with_format("arrow")[:]["labels"]
    flat = pc.list_flatten(labels).to_numpy(zero_copy_only=False)
    return np.bincount(flat.astype(np.int64), minlength=n_labels)


def iter_shards(plan: Plan, *, images: bool = True, resolution: int = 512, num_proc: int = 1,
                on_missing: str = "error", max_shard_rows: int = DEFAULT_SHARD_ROWS) -> Iterator[tuple[str, int, int, Any]]:
    """Yield ``(split, shard_index, num_shards, datasets.Dataset)`` in split order, decoding images per shard."""
    progress = tqdm(total=len(plan.rows), desc=f"prepare {plan.corpus.name}", unit="img", disable=not images)
    with ImageEncoder(resolution, num_proc) if images else contextlib.nullcontext() as encoder:
        for split in SPLITS:
            part = plan.rows[plan.rows["split"] == split]
            n_shards = math.ceil(len(part) / max_shard_rows)
            for k in range(n_shards):
                rows = part.iloc[k * max_shard_rows:(k + 1) * max_shard_rows]
                encoded = None
                if images:
                    results = encoder.encode([plan.table.root / p for p in rows["source_path"]])
                    bad = [(int(i), why) for i, (_, why) in zip(rows.index, results) if why]
                    keep = _skip_or_raise(plan, bad, on_missing)[rows.index.to_numpy()]
                    rows = rows[keep]
                    encoded = [b for b, why in results if not why]
                    progress.update(len(results))
                yield split, k, n_shards, _shard_dataset(plan, rows, encoded)
    progress.close()


def _finish_info(plan: Plan, datasets_by_split: dict[str, list], *, images: bool, resolution: int | None) -> dict[str, Any]:
    counts, per_split = {}, {}
    for split, parts in datasets_by_split.items():
        counts[split] = sum(len(d) for d in parts)
        per_label = sum((label_counts(d, len(plan.label_names)) for d in parts), np.zeros(len(plan.label_names), int))
        per_split[split] = dict(zip(plan.label_names, per_label.tolist()))
    if sum(counts.values()) == 0:
        raise UserError(f"no images left: all {len(plan.skipped)} were skipped (see skipped.csv); check --data-dir")
    from hf_cxr_diffusion import __version__

    return {
        **plan.options, "images": images, "resolution": resolution if images else None,
        "label_names": list(plan.label_names), "num_rows": counts, "label_counts": per_split,
        "skipped": len(plan.skipped), "corpus_description": plan.corpus.description,
        "homepage": plan.corpus.homepage, "license_note": plan.corpus.license_note,
        "citation": plan.corpus.citation, "hf_cxr_diffusion_version": __version__,
    }


def _checked_plan(corpus: str | Corpus, data_dir: str | os.PathLike, *, images: bool, on_missing: str, **plan_kwargs) -> Plan:
    """:func:`plan_dataset`, then (when images are written) :func:`check_files`: the first step of both writers."""
    plan = plan_dataset(corpus, data_dir, **plan_kwargs)
    return check_files(plan, on_missing) if images else plan


def prepare_dataset(
    corpus: str | Corpus,
    data_dir: str | os.PathLike,
    *,
    template: str | None = None,
    uncertain: str = "ones",
    views: Sequence[str] | str | None = ("frontal",),
    resolution: int = 512,
    splits: str = "auto",
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    on_missing: str = "error",
    num_proc: int = 1,
    limit: int | None = None,
    images: bool = True,
    tokenizer=None,
):
    """A corpus as an in-memory ``datasets.DatasetDict`` (nothing written to the output).

    ``images=False`` gives the prompts-only dataset (no file checks). The returned dict carries
    ``.prepare_info`` (options, counts, skipped rows) for :func:`save_dataset_folder`.
    """
    from datasets import DatasetDict, concatenate_datasets

    plan = _checked_plan(corpus, data_dir, images=images, on_missing=on_missing, template=template, uncertain=uncertain,
                         views=views, splits=splits, split_fractions=split_fractions, limit=limit, tokenizer=tokenizer)
    parts: dict[str, list] = {}
    for split, _, _, ds in iter_shards(plan, images=images, resolution=resolution, num_proc=num_proc,
                                       on_missing=on_missing, max_shard_rows=max(len(plan.rows), 1)):
        parts.setdefault(split, []).append(ds)
    out = DatasetDict({s: concatenate_datasets(p) if len(p) > 1 else p[0] for s, p in parts.items()})
    out.prepare_info = _finish_info(plan, parts, images=images, resolution=resolution)
    out.prepare_skipped = list(plan.skipped)
    return out


def save_dataset_folder(dsdict, out_dir: str | os.PathLike, *, info: dict[str, Any] | None = None,
                        skipped: Sequence[dict[str, str]] | None = None, max_shard_rows: int = DEFAULT_SHARD_ROWS,
                        overwrite: bool = False) -> Path:
    """Write a prepared DatasetDict as a Hub-ready folder (parquet shards, prompts config, card, info)."""
    from hf_cxr_diffusion.data.card import write_folder

    info = info if info is not None else getattr(dsdict, "prepare_info", None)
    if info is None:
        raise UserError("save_dataset_folder needs info=...; pass the DatasetDict returned by prepare_dataset")
    skipped = skipped if skipped is not None else getattr(dsdict, "prepare_skipped", [])

    def shards():
        for split in SPLITS:
            if split in dsdict:
                n = max(1, math.ceil(len(dsdict[split]) / max_shard_rows))
                for k in range(n):
                    yield split, k, n, dsdict[split].shard(n, k, contiguous=True)

    return write_folder(out_dir, shards(), info_fn=lambda written: info, skipped=skipped, overwrite=overwrite)


def prepare(
    corpus: str | Corpus,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    template: str | None = None,
    uncertain: str = "ones",
    views: Sequence[str] | str | None = ("frontal",),
    resolution: int = 512,
    splits: str = "auto",
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    on_missing: str = "error",
    num_proc: int = 1,
    limit: int | None = None,
    images: bool = True,
    max_shard_rows: int = DEFAULT_SHARD_ROWS,
    overwrite: bool = False,
    tokenizer=None,
) -> Path:
    """``cxr-diffusion prepare``: read, label, prompt, split, decode and write the dataset folder shard by shard."""
    from hf_cxr_diffusion.data.card import write_folder

    check_output_location(out_dir, {"--data-dir": data_dir})
    plan = _checked_plan(corpus, data_dir, images=images, on_missing=on_missing, template=template, uncertain=uncertain,
                         views=views, splits=splits, split_fractions=split_fractions, limit=limit, tokenizer=tokenizer)
    shards = iter_shards(plan, images=images, resolution=resolution, num_proc=num_proc, on_missing=on_missing,
                         max_shard_rows=max_shard_rows)
    return write_folder(out_dir, shards, overwrite=overwrite, skipped=plan.skipped,
                        info_fn=lambda written: _finish_info(plan, written, images=images, resolution=resolution))


def iter_records(corpus: str | Corpus, data_dir: str | os.PathLike, *, views: Sequence[str] | str | None = ("frontal",),
                 splits: str = "auto", split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
                 limit: int | None = None) -> Iterator[Record]:
    """The corpus's images as :class:`Record` objects with their final split (no labels policy, no images)."""
    reader = get_corpus(corpus) if isinstance(corpus, str) else corpus
    table = reader.read(Path(data_dir), reports=True)
    table.frame["path"] = check_paths(table.frame, table.root)
    table = _select_views(table, views)
    if limit is not None:
        table = table.subset(np.arange(min(limit, len(table))))
    table.frame["split"] = assign_splits(table.frame, splits, split_fractions).to_numpy()
    yield from table.records()


def _iter_examples(root: str, rows: list[dict], resolution: int, on_missing: str) -> Iterator[dict]:
    for row in rows:
        png, why = process_image((str(Path(root) / row["source_path"]), resolution))
        if why:
            if on_missing == "error":
                raise UserError(f"{Path(root) / row['source_path']}: {why}; fix it or pass --on-missing skip")
            logger.warning("skipping %s: %s", row["source_path"], why)
            continue
        yield {"image": {"bytes": png, "path": None}, **row}


def prepare_iterable(corpus: str | Corpus, data_dir: str | os.PathLike, *, resolution: int = 512,
                     on_missing: str = "error", **plan_kwargs):
    """A lazy ``datasets.IterableDatasetDict``: metadata planned up front, images decoded while iterating."""
    from datasets import IterableDataset, IterableDatasetDict

    check_on_missing(on_missing)
    plan = plan_dataset(corpus, data_dir, **plan_kwargs)
    features = dataset_features(plan.label_names)
    out = {}
    for split in SPLITS:
        part = plan.rows[plan.rows["split"] == split]
        if part.empty:
            continue
        rows = part.to_dict("records")
        out[split] = IterableDataset.from_generator(
            _iter_examples, features=features,
            gen_kwargs={"root": str(plan.table.root), "rows": rows, "resolution": resolution, "on_missing": on_missing},
        )
    return IterableDatasetDict(out)
