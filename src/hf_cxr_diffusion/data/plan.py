"""Plan a prepared dataset before any image is decoded: one metadata row per image with its labels, prompt
and split, plus every row that is skipped and why (vectorised; the only file access is the containment and
existence check of the image paths).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hf_cxr_diffusion.artefacts import SKIPPED_FILE
from hf_cxr_diffusion.data.config import PrepareConfig
from hf_cxr_diffusion.data.corpora import Corpus, CorpusTable, get_corpus
from hf_cxr_diffusion.data.corpora.base import check_paths, origin_of
from hf_cxr_diffusion.data.labels import apply_policy
from hf_cxr_diffusion.data.prompts import UNKNOWN, findings_text, normalise_whitespace, render, resolve_template, template_fields
from hf_cxr_diffusion.data.splits import assign_splits
from hf_cxr_diffusion.errors import UserError

logger = logging.getLogger(__name__)

#: what :meth:`Plan.drop_bad` says of images that cannot be read
MISSING = "are missing or unreadable"


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

    def keep(self, mask: np.ndarray) -> None:
        """Keep only the rows where ``mask`` is true (rows and table stay aligned)."""
        if not mask.all():
            self.rows = self.rows[mask].reset_index(drop=True)
            self.table = self.table.subset(mask)

    def drop_bad(self, bad: Sequence[tuple[int, str]], on_missing: str, problem: str, fix: str) -> np.ndarray:
        """Rows ``(position, reason)`` become skipped (``on_missing="skip"``) or a :class:`UserError` naming the first.

        ``problem`` completes "N image(s) listed by the corpus ..."; ``fix`` says what to do. Returns the mask
        of rows kept; the caller applies it (:meth:`keep`) or filters its own shard.
        """
        keep = np.ones(len(self.rows), dtype=bool)
        if not bad:
            return keep
        if on_missing == "error":
            first = ", ".join(f"{self.table.root / self.rows['source_path'].iat[i]} ({why})" for i, why in bad[:5])
            raise UserError(f"{len(bad)} image(s) listed by the corpus {problem}, first: {first}; {fix} or pass "
                            f"--on-missing skip (they are then listed in {SKIPPED_FILE})")
        for i, why in bad:
            keep[i] = False
            row = self.rows.iloc[i]
            self.skipped.append({"source_path": row["source_path"], "split": row["split"], "reason": why})
        logger.warning("skipping %d image(s) listed by the corpus that %s; listed in %s", len(bad), problem, SKIPPED_FILE)
        return keep


def _select_views(table: CorpusTable, views: tuple[str, ...] | None) -> CorpusTable:
    if views is None:
        return table
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


def _duplicates(table: CorpusTable, policy: str) -> tuple[CorpusTable, list[dict[str, str]], int]:
    """Rows listing an image already listed: an error, kept, or dropped (returned as skipped rows)."""
    frame = table.frame
    repeat = frame["path"].duplicated(keep="first").to_numpy()
    n = int(repeat.sum())
    if n == 0:
        return table, [], 0
    first_row = frame.reset_index(drop=True).groupby("path").head(1).set_index("path")
    examples = [f"{frame['path'].iat[i]} ({origin_of(frame.iloc[i])}, first listed at {origin_of(first_row.loc[frame['path'].iat[i]])})"
                for i in np.flatnonzero(repeat)[:3]]
    if policy == "error":
        raise UserError(f"{n} row(s) list an image that is already listed, e.g. {'; '.join(examples)}; fix the metadata "
                        "or pass --on-duplicate keep (train on every row) or drop (keep the first row of each image)")
    logger.warning("%d row(s) list an image already listed (e.g. %s): %s", n, examples[0],
                   "kept (--on-duplicate keep)" if policy == "keep" else f"dropped, listed in {SKIPPED_FILE}")
    if policy == "keep":
        return table, [], n
    skipped = [{"source_path": frame["path"].iat[i], "split": "", "reason": f"duplicate row ({origin_of(frame.iloc[i])})"}
               for i in np.flatnonzero(repeat)]
    return table.subset(~repeat), skipped, n


def _prompt_text(table: CorpusTable, labels) -> dict[str, pd.Series]:
    frame = table.frame
    findings = findings_text(labels.positive, table.label_names)
    return {
        "findings": findings,
        "age": frame["age"].astype("string").fillna(UNKNOWN).reset_index(drop=True),
        "sex": frame["sex"].replace("", UNKNOWN).reset_index(drop=True),
        "view": frame["view"].replace("", UNKNOWN).reset_index(drop=True),
        "report": normalise_whitespace(frame["report"]).reset_index(drop=True),
        "label": frame["label"].str.replace("|", ", ", regex=False).where(frame["label"] != "", findings.to_numpy())
        .reset_index(drop=True),
    }


def read_table(config: PrepareConfig, *, reports: bool = True) -> tuple[Corpus, CorpusTable, list[dict[str, str]], int]:
    """Read the corpus, check every image path, select views, handle duplicate rows and apply ``--limit``."""
    reader = get_corpus(config.corpus)
    table = reader.read(Path(config.data_dir).expanduser(), reports=reports)
    table.frame["path"] = check_paths(table.frame, table.root, resolve=config.images)
    table = _select_views(table, config.view_filter)
    table, skipped, duplicates = _duplicates(table, config.on_duplicate)
    if config.limit is not None:
        table = table.subset(np.arange(min(config.limit, len(table))))
    if len(table) == 0:
        raise UserError(f"corpus {reader.name} in {config.data_dir} has no images listed; check --data-dir")
    return reader, table, skipped, duplicates


def plan_dataset(config: PrepareConfig | None = None, *, tokenizer=None, **options: Any) -> Plan:
    """Read a corpus and compute labels, prompts and splits for every image (no image is decoded).

    Args:
        config: the options (or give them as keywords, e.g. ``plan_dataset(corpus="nih", data_dir="NIH")``).
        tokenizer: CLIP tokenizer that cuts prompts at 77 tokens (default: the offline CLIP tokenizer).
    """
    config = PrepareConfig.from_options(config, **options)
    fmt_hint = resolve_template(config.template or get_corpus(config.corpus).default_template)
    reader, table, skipped, duplicates = read_table(config, reports="report" in template_fields(fmt_hint))
    template = config.template or reader.default_template_for(table)
    fmt = resolve_template(template)
    labels = apply_policy(table.values, table.label_names, config.uncertain, no_finding_exempt=reader.no_finding_exempt)
    text = _prompt_text(table, labels)
    prompts = render(fmt, {k: text[k] for k in template_fields(fmt)}, tokenizer=tokenizer)
    frame = table.frame
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
        "split": assign_splits(frame, config.splits, config.split_fractions, salt=config.split_salt).to_numpy(),
        "source_path": frame["path"].to_numpy(),
        "corpus": reader.name,
    })
    options = {**config.recorded(), "template": template, "template_format": fmt, "duplicates": duplicates}
    plan = Plan(reader, table, rows, options, skipped)
    empty = [(int(i), f"empty prompt (no caption or report text for template {template!r})")
             for i in np.flatnonzero((rows["prompt"] == "").to_numpy())]
    plan.keep(plan.drop_bad(empty, config.on_missing, f"have no caption or report text for the template {template!r}",
                            "add captions or choose another --template"))
    if plan.rows.empty:
        raise UserError(f"no images left in {config.data_dir}: every row was skipped (see the warnings); check --data-dir")
    return plan


def check_files(plan: Plan, on_missing: str = "error") -> Plan:
    """Drop (``skip``) or report (``error``) rows whose image file does not exist."""
    root = plan.table.root
    exists = np.fromiter((os.path.isfile(root / p) for p in plan.rows["source_path"]), dtype=bool, count=len(plan.rows))
    bad = [(int(i), "missing") for i in np.flatnonzero(~exists)]
    plan.keep(plan.drop_bad(bad, on_missing, MISSING, "fix the data folder"))
    if plan.rows.empty:
        raise UserError(f"all listed images are missing under {root}; check --data-dir")
    return plan
