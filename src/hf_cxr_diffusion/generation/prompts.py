"""Where the prompts of a synthetic dataset come from, each paired with the labels it should show.

Three sources, all ending in a list of :class:`PromptItem` (image ``i`` of the dataset is item ``i``):

* :func:`prompts_from_file`: a text file, one prompt per line (no labels), or a ``.jsonl`` file
  with ``{"prompt": ..., "labels": [...]}`` per line;
* :func:`prompts_from_dataset`: ``per_class`` prompts for every class of a prepared dataset, a
  class being the set of positive findings of a row (``()`` = no positive finding), the prompts
  drawn (seeded) from that class's own rows, as in the per-class generation of the
  DreamBooth/DenseNet study (1,200 images per class);
* :func:`prompts_from_labels_csv`: a CSV with columns ``prompt``, ``labels`` (``|``-separated)
  and ``count``.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.data.loading import load_dataset_dict
from hf_cxr_diffusion.errors import UserError

logger = logging.getLogger(__name__)

#: separator of several labels in one CSV cell
LABEL_SEPARATOR = "|"


@dataclass(frozen=True)
class PromptItem:
    """One image to make: its prompt and the positive findings it is meant to show."""

    prompt: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptPlan:
    """The ordered prompts of a run and the label vocabulary of the dataset it writes."""

    items: tuple[PromptItem, ...]
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.items:
            raise UserError("no prompts to generate from: the prompt source is empty")
        unknown = sorted({lab for it in self.items for lab in it.labels} - set(self.label_names))
        if unknown:
            raise UserError(f"labels {unknown} are not in the label names {list(self.label_names)}")


def condition_plan(conditions: Sequence[str], per_condition: int, template: str, label_names: Sequence[str]) -> PromptPlan:
    """``per_condition`` prompts ``template.format(condition)`` per condition, each labelled with its condition.

    Image i of a condition is the same item in every plan made with the same arguments, so pipelines
    generating the plan at one seed can be compared image by image (the demo's base vs fine-tuned grid,
    a study's rows of methods).
    """
    if per_condition < 1:
        raise UserError(f"per_condition must be at least 1, got {per_condition}")
    items = tuple(PromptItem(template.format(c), (c,)) for c in conditions for _ in range(per_condition))
    return PromptPlan(items, tuple(label_names))


def _names_in_order(items: Sequence[PromptItem]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in items:
        seen.update(dict.fromkeys(item.labels))
    return tuple(seen)


def prompts_from_file(path: str | Path, label_names: Sequence[str] | None = None) -> PromptPlan:
    """Read ``.txt`` (one prompt per line, blank lines ignored) or ``.jsonl`` prompts."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"prompts file {file} does not exist")
    items: list[PromptItem] = []
    for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if file.suffix == ".jsonl":
            try:
                row = json.loads(line)
                items.append(PromptItem(str(row["prompt"]), tuple(row.get("labels") or ())))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise UserError(f"{file}:{lineno}: expected a JSON object with 'prompt' (and 'labels'): {err}") from err
        else:
            items.append(PromptItem(line.strip()))
    if not items:
        raise UserError(f"prompts file {file} is empty: write one prompt per line")
    return PromptPlan(tuple(items), tuple(label_names) if label_names else _names_in_order(items))


def prompts_from_labels_csv(path: str | Path, label_names: Sequence[str] | None = None) -> PromptPlan:
    """Read a CSV with columns ``prompt``, ``labels`` (``|``-separated, may be blank) and ``count``."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"labels CSV {file} does not exist")
    items: list[PromptItem] = []
    with file.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"prompt", "labels", "count"} - set(reader.fieldnames or ())
        if missing:
            raise UserError(f"labels CSV {file} lacks column(s) {sorted(missing)}; need prompt,labels,count")
        for lineno, row in enumerate(reader, start=2):
            try:
                count = int(row["count"])
            except (TypeError, ValueError) as err:
                raise UserError(f"{file}:{lineno}: count {row['count']!r} is not an integer") from err
            if count < 0 or not (row["prompt"] or "").strip():
                raise UserError(f"{file}:{lineno}: need a non-empty prompt and a count >= 0")
            labels = tuple(x.strip() for x in (row["labels"] or "").split(LABEL_SEPARATOR) if x.strip())
            items.extend([PromptItem(row["prompt"].strip(), labels)] * count)
    if not items:
        raise UserError(f"labels CSV {file} asks for no images (no rows or all counts 0)")
    return PromptPlan(tuple(items), tuple(label_names) if label_names else _names_in_order(items))


def label_names_of(ds: Any, where: str) -> tuple[str, ...]:
    """The ``ClassLabel`` names of a dataset's ``labels`` column (``List(ClassLabel)``)."""
    feature = ds.features.get("labels")
    names = getattr(getattr(feature, "feature", None), "names", None)
    if names is None:
        raise UserError(f"{where} has no 'labels' column of type List(ClassLabel); prepare it with `cxr-diffusion prepare`")
    return tuple(names)


def prompts_from_dataset(
    name_or_path: str | Path, per_class: int, *, split: str = "train", seed: int = 0
) -> PromptPlan:
    """``per_class`` prompts for each label combination present in ``split`` of a prepared dataset."""
    if per_class <= 0:
        raise UserError(f"--per-class must be positive, got {per_class}")
    dsd = load_dataset_dict(name_or_path)
    if split not in dsd:
        raise UserError(f"dataset {name_or_path} has no split {split!r} (has {sorted(dsd)})")
    ds = dsd[split]
    names = label_names_of(ds, f"dataset {name_or_path}")
    if "prompt" not in ds.column_names:
        raise UserError(f"dataset {name_or_path} has no 'prompt' column")
    table = ds.select_columns(["prompt", "labels"]).to_dict()
    by_class: dict[tuple[int, ...], list[str]] = {}
    for prompt, ids in zip(table["prompt"], table["labels"]):
        by_class.setdefault(tuple(sorted(ids)), []).append(prompt)
    if not by_class:
        raise UserError(f"split {split!r} of dataset {name_or_path} is empty")
    rng = random.Random(seed)
    items: list[PromptItem] = []
    for key in sorted(by_class, key=lambda k: (len(k), k)):
        prompts = by_class[key]
        labels = tuple(names[i] for i in key)
        items.extend(PromptItem(p, labels) for p in rng.choices(prompts, k=per_class))
    logger.info("%d prompts: %d per class for %d classes of %s", len(items), per_class, len(by_class), name_or_path)
    return PromptPlan(tuple(items), names)


def load_prompt_plan(
    *,
    prompts_file: str | Path | None = None,
    dataset: str | Path | None = None,
    per_class: int | None = None,
    labels_csv: str | Path | None = None,
    split: str = "train",
    seed: int = 0,
) -> PromptPlan:
    """The plan from exactly one of the three sources (the CLI's mutually exclusive flags)."""
    given = [x is not None for x in (prompts_file, dataset, labels_csv)]
    if sum(given) != 1:
        raise UserError("give exactly one prompt source: --prompts-file, --dataset (with --per-class) or --labels-csv")
    if prompts_file is not None:
        return prompts_from_file(prompts_file)
    if labels_csv is not None:
        return prompts_from_labels_csv(labels_csv)
    if per_class is None:
        raise UserError("--dataset needs --per-class N (images per class)")
    return prompts_from_dataset(dataset, per_class, split=split, seed=seed)
