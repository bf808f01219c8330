"""Records -> ``datasets.DatasetDict`` -> Hub-ready dataset folder (parquet shards + card).

Every function takes one :class:`~hf_cxr_diffusion.data.config.PrepareConfig` (or its fields as
keywords) and returns a :class:`Prepared`. ``prepare_dataset`` builds the dataset in memory (nothing
written); ``save_dataset_folder`` writes one as a folder; ``prepare`` does both while streaming shard by
shard, so memory stays bounded by one shard; ``prepare_iterable`` / ``iter_records`` are the lazy paths
for corpora too big for memory (MIMIC-CXR-JPG: 377k images). See docs/design.md for the folder contract.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from hf_cxr_diffusion import runs
from hf_cxr_diffusion.artefacts import SKIPPED_FILE
from hf_cxr_diffusion.data.config import PrepareConfig
from hf_cxr_diffusion.data.corpora import Record
from hf_cxr_diffusion.data.images import DecodeSpec, process_image
from hf_cxr_diffusion.data.plan import MISSING, Plan, check_files, plan_dataset, read_table
from hf_cxr_diffusion.data.splits import SPLITS, assign_splits
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hashing import sha256_bytes, sha256_json
from hf_cxr_diffusion.io import check_output_location

logger = logging.getLogger(__name__)

_TEXT_COLUMNS = ("prompt", "patient_id", "study_id", "view", "projection", "sex", "report", "split", "source_path", "corpus")


@dataclass(frozen=True)
class Prepared:
    """What the ``prepare*`` functions return.

    Args:
        dataset: the ``DatasetDict`` (``prepare_dataset``), a streaming ``IterableDatasetDict`` over the written
            folder (``prepare``, ``save_dataset_folder``) or over the corpus (``prepare_iterable``).
        info: the content of ``prepare_info.json`` (options, rows and labels per split, skipped, duplicates).
        skipped: one ``{"source_path", "split", "reason"}`` per row left out (also ``skipped.csv``).
        output_dir: the written folder, if any.
        data_dir: the corpus folder it was prepared from (never recorded in the folder).
    """

    dataset: Any
    info: dict[str, Any]
    skipped: tuple[dict[str, str], ...] = ()
    output_dir: Path | None = None
    data_dir: Path | None = field(default=None, repr=False)


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


class ImageEncoder:
    """Decode + resize + PNG-encode images in order, in this process or a pool of ``num_proc`` spawn processes.

    :meth:`submit` starts a batch and returns a function that waits for its results, so the caller can write one
    shard while the workers encode the next. Spawn workers import the caller's main script (Python's rule), so a
    script that calls ``prepare`` should keep heavy imports inside functions; ``cxr-diffusion``'s own is light.
    """

    #: images per task sent to a worker: small enough that no worker idles long at the end of a batch
    CHUNK = 8

    def __init__(self, spec: DecodeSpec, num_proc: int = 1) -> None:
        self.spec, self.num_proc = spec, max(1, int(num_proc))
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

    def submit(self, paths: Sequence[Path]) -> Callable[[], list[tuple[bytes | None, str | None]]]:
        """Start encoding ``paths`` (in the pool); the returned function waits for the results, in order:
        ``(png_bytes, None)`` or ``(None, reason)`` per image."""
        jobs = [(str(p), self.spec) for p in paths]
        if self._pool is None:
            return lambda: [process_image(j) for j in jobs]
        return self._pool.map_async(process_image, jobs, chunksize=self.CHUNK).get


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
        values = [{"bytes": b, "path": None} for b in images] if name == "image" else rows[name].tolist()
        columns[name] = pa.array(values, type=schema.field(name).type)
    table = pa.Table.from_pydict(columns, schema=schema)
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=features), fingerprint=generate_random_fingerprint())


def label_counts(ds, n_labels: int) -> np.ndarray:
    """Positive images per label id of a prepared dataset (Arrow, no Python loop over rows)."""
    import pyarrow.compute as pc

    labels = ds.select_columns(["labels"]).with_format("arrow")[:]["labels"]
    flat = pc.list_flatten(labels).to_numpy(zero_copy_only=False)
    return np.bincount(flat.astype(np.int64), minlength=n_labels)


def iter_shards(plan: Plan, config: PrepareConfig, *, max_shard_rows: int | None = None) -> Iterator[tuple[str, int, int, Any]]:
    """Yield ``(split, shard_index, num_shards, datasets.Dataset)`` in split order, decoding images per shard.

    With ``num_proc > 1`` the next shard's images are encoding while the caller writes this one (two shards of PNG
    bytes in memory at most).
    """
    rows_per_shard = max_shard_rows or config.max_shard_rows
    shards = []
    for split in SPLITS:
        part = plan.rows[plan.rows["split"] == split]
        n_shards = math.ceil(len(part) / rows_per_shard)
        shards += [(split, k, n_shards, part.iloc[k * rows_per_shard:(k + 1) * rows_per_shard]) for k in range(n_shards)]
    if not config.images:
        for split, k, n_shards, rows in shards:
            yield split, k, n_shards, _shard_dataset(plan, rows, None)
        return
    progress = tqdm(total=len(plan.rows), desc=f"prepare {plan.corpus.name}", unit="img")

    def submit(i: int):
        return encoder.submit([plan.table.root / p for p in shards[i][3]["source_path"]]) if i < len(shards) else None

    with ImageEncoder(config.decode_spec, config.num_proc) as encoder:
        pending = submit(0)
        for i, (split, k, n_shards, rows) in enumerate(shards):
            results, pending = pending(), submit(i + 1)
            bad = [(int(j), why) for j, (_, why) in zip(rows.index, results) if why]
            keep = plan.drop_bad(bad, config.on_missing, MISSING, "fix the data folder")[rows.index.to_numpy()]
            progress.update(len(results))
            yield split, k, n_shards, _shard_dataset(plan, rows[keep], [b for b, why in results if not why])
    progress.close()


def _finish_info(plan: Plan, config: PrepareConfig, datasets_by_split: dict[str, list]) -> dict[str, Any]:
    counts, per_split = {}, {}
    for split in SPLITS:
        parts = datasets_by_split.get(split, [])
        counts[split] = sum(len(d) for d in parts)
        per_label = sum((label_counts(d, len(plan.label_names)) for d in parts), np.zeros(len(plan.label_names), int))
        per_split[split] = dict(zip(plan.label_names, per_label.tolist()))
    if sum(counts.values()) == 0:
        raise UserError(f"no images left: all {len(plan.skipped)} were skipped (see {SKIPPED_FILE}); check --data-dir")
    empty = [s for s in SPLITS if counts[s] == 0]
    intended = {s for s, f in zip(SPLITS, config.split_fractions) if f == 0}
    if set(empty) - intended:
        logger.warning("split(s) %s have no images (the corpus lists none for them after filtering and skipping)",
                       ", ".join(s for s in empty if s not in intended))
    from hf_cxr_diffusion import __version__
    from hf_cxr_diffusion.phantoms.corpus import is_phantom_corpus

    return {
        **plan.options, "images": config.images, "resolution": config.resolution if config.images else None,
        "label_names": list(plan.label_names), "num_rows": {s: n for s, n in counts.items() if n},
        "empty_splits": empty, "label_counts": {s: c for s, c in per_split.items() if counts[s]},
        "skipped": len(plan.skipped), "corpus_description": plan.corpus.description,
        "homepage": plan.corpus.homepage, "license_note": plan.corpus.license_note,
        "citation": plan.corpus.citation, "hf_cxr_diffusion_version": __version__,
        "phantom": is_phantom_corpus(config.data_dir),  # procedural phantoms: no patient data, no data-use terms
    }


def _checked_plan(config: PrepareConfig, tokenizer) -> Plan:
    """:func:`plan_dataset`, then (when images are written) :func:`check_files`: the first step of every writer."""
    plan = plan_dataset(config, tokenizer=tokenizer)
    return check_files(plan, config.on_missing) if config.images else plan


def prepare_dataset(config: PrepareConfig | None = None, *, tokenizer=None, **options: Any) -> Prepared:
    """A corpus as an in-memory ``datasets.DatasetDict`` (nothing written; ``output_dir`` is ignored).

    Args:
        config: the options, or give them as keywords (``prepare_dataset(corpus="nih", data_dir="NIH")``).
        tokenizer: CLIP tokenizer that cuts prompts at 77 tokens (default: the offline CLIP tokenizer).
    """
    from datasets import DatasetDict, concatenate_datasets

    config = PrepareConfig.from_options(config, **options)
    plan = _checked_plan(config, tokenizer)
    parts: dict[str, list] = {}
    for split, _, _, ds in iter_shards(plan, config, max_shard_rows=max(len(plan.rows), 1)):
        parts.setdefault(split, []).append(ds)
    dataset = DatasetDict({s: concatenate_datasets(p) if len(p) > 1 else p[0] for s, p in parts.items()})
    info = _finish_info(plan, config, parts)
    return Prepared(dataset, info, tuple(plan.skipped), data_dir=Path(config.data_dir).expanduser())


def _written(out: Path, info: dict[str, Any], skipped: Sequence[dict[str, str]], data_dir: Path | None) -> Prepared:
    from hf_cxr_diffusion.data.loading import load_dataset_dict

    return Prepared(load_dataset_dict(out, streaming=True), info, tuple(skipped), out, data_dir)


def save_dataset_folder(prepared: Prepared, output_dir: str | Path, *, max_shard_rows: int | None = None,
                        overwrite: bool = False) -> Prepared:
    """Write the result of :func:`prepare_dataset` as a Hub-ready folder (parquet shards, prompts config, card, info)."""
    from hf_cxr_diffusion.data.card import write_folder

    check_output_location(output_dir, {"--data-dir": prepared.data_dir})
    rows_per_shard = max_shard_rows or PrepareConfig().max_shard_rows
    dsdict = prepared.dataset

    def shards():
        for split in SPLITS:
            if split in dsdict:
                n = max(1, math.ceil(len(dsdict[split]) / rows_per_shard))
                for k in range(n):
                    yield split, k, n, dsdict[split].shard(n, k, contiguous=True)

    fingerprints = {split: ds._fingerprint for split, ds in dsdict.items()}  # datasets' own content fingerprint
    identity = runs.RunIdentity("prepare", prepared.info, sha256_json(fingerprints), "")
    out = write_folder(output_dir, shards(), info_fn=lambda written: prepared.info, skipped=list(prepared.skipped),
                       identity=identity, overwrite=overwrite)
    return _written(out, prepared.info, prepared.skipped, prepared.data_dir)


def prepare(config: PrepareConfig | None = None, *, tokenizer=None, **options: Any) -> Prepared:
    """``cxr-diffusion prepare``: read, label, prompt, split, decode and write the dataset folder shard by shard.

    Args:
        config: the options (``output_dir`` required), or give them as keywords:
            ``prepare(corpus="chexpert", data_dir="corpus", output_dir="prepared", resolution=512)``.
        tokenizer: CLIP tokenizer that cuts prompts at 77 tokens (default: the offline CLIP tokenizer).
    """
    from hf_cxr_diffusion.data.card import write_folder

    config = PrepareConfig.from_options(config, **options)
    if not str(config.output_dir):
        raise UserError("--output-dir is required")
    data_dir = Path(config.data_dir).expanduser()
    check_output_location(config.output_dir, {"--data-dir": data_dir})
    plan = _checked_plan(config, tokenizer)
    info: dict[str, Any] = {}

    def finish(written: dict[str, list]) -> dict[str, Any]:
        info.update(_finish_info(plan, config, written))
        return info

    rows = sha256_bytes(pd.util.hash_pandas_object(plan.rows.astype(str), index=False).to_numpy().tobytes())  # the rows read
    identity = runs.RunIdentity("prepare", dataclasses.asdict(config), rows, "")
    out = write_folder(config.output_dir, iter_shards(plan, config), overwrite=config.overwrite, skipped=plan.skipped,
                       info_fn=finish, identity=identity)
    return _written(out, info, plan.skipped, data_dir)


def iter_records(config: PrepareConfig | None = None, **options: Any) -> Iterator[Record]:
    """The corpus's images as :class:`Record` objects with their final split (no labels policy, no images)."""
    config = PrepareConfig.from_options(config, **options)
    _, table, _, _ = read_table(config)
    table.frame["split"] = assign_splits(table.frame, config.splits, config.split_fractions, salt=config.split_salt).to_numpy()
    yield from table.records()


def _iter_examples(root: str, rows: list[dict], spec: DecodeSpec, on_missing: str) -> Iterator[dict]:
    for row in rows:
        png, why = process_image((str(Path(root) / row["source_path"]), spec))
        if why:
            if on_missing == "error":
                raise UserError(f"{Path(root) / row['source_path']}: {why}; fix it or pass --on-missing skip")
            logger.warning("skipping %s: %s", row["source_path"], why)
            continue
        yield {"image": {"bytes": png, "path": None}, **row}


def prepare_iterable(config: PrepareConfig | None = None, *, tokenizer=None, **options: Any) -> Prepared:
    """A lazy ``datasets.IterableDatasetDict``: metadata planned up front, images decoded while iterating.

    ``info`` holds the planned rows per split; images found unreadable while iterating are logged
    (``on_missing="skip"``) or raise (``"error"``).
    """
    from datasets import IterableDataset, IterableDatasetDict

    config = PrepareConfig.from_options(config, **options)
    plan = plan_dataset(config, tokenizer=tokenizer)
    features = dataset_features(plan.label_names)
    out = {}
    for split in SPLITS:
        part = plan.rows[plan.rows["split"] == split]
        if part.empty:
            continue
        out[split] = IterableDataset.from_generator(
            _iter_examples, features=features,
            gen_kwargs={"root": str(plan.table.root), "rows": part.to_dict("records"), "spec": config.decode_spec,
                        "on_missing": config.on_missing},
        )
    planned = plan.rows["split"].value_counts().to_dict()
    info = {**plan.options, "label_names": list(plan.label_names), "planned_rows": {s: planned[s] for s in out}}
    return Prepared(IterableDatasetDict(out), info, tuple(plan.skipped), data_dir=Path(config.data_dir).expanduser())
