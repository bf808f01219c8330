"""A generic folder of the user's own images (a hospital export, a Kaggle set).

Three layouts, checked in this order:

1. ``metadata.csv`` or ``metadata.jsonl`` (the ``datasets`` ImageFolder convention): a ``file_name``
   column plus a caption (``text`` / ``caption`` / ``prompt`` / ``report``) and/or labels (``label`` /
   ``labels`` / ``findings``, several joined by "|"); optional ``patient_id``, ``study_id``, ``sex``,
   ``age``, ``view``, ``split`` columns.
2. images with a sidecar caption ``name.txt`` next to ``name.png`` (the fine-tuning tutorial layout);
3. images in class sub-folders ``<class>/*.png`` (label = folder name).

Without a patient id column each image counts as its own patient.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from hf_cxr_diffusion.data.corpora.base import IMAGE_SUFFIXES, Corpus, CorpusTable, age_from_text, normalise_sex, read_csv, require_dir
from hf_cxr_diffusion.errors import UserError

CAPTION_COLUMNS = ("text", "caption", "prompt", "report")
LABEL_COLUMNS = ("label", "labels", "findings")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "validation", "valid": "validation",
                 "validation": "validation", "test": "test", "": ""}


def _first(frame: pd.DataFrame, names: tuple[str, ...]) -> pd.Series | None:
    col = next((c for c in names if c in frame.columns), None)
    return None if col is None else frame[col].fillna("").astype(str)


class Folder(Corpus):
    name = "folder"
    description = "A user-supplied folder of chest X-rays with captions and/or labels."
    license_note = "Set by the data owner: check that you may train on and share these images."

    def read(self, data_dir: Path, *, reports: bool = True) -> CorpusTable:
        root = require_dir(data_dir, "folder of images (with metadata.csv/.jsonl, sidecar .txt captions or class sub-folders)")
        meta = self._metadata(root)
        frame = meta if meta is not None else self._scan(root)
        if frame.empty:
            raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}")
        labels = frame["label"].fillna("").astype(str)
        split_labels = labels.str.split("|").map(lambda ls: [x.strip() for x in ls if x.strip()])
        names = tuple(sorted({x for ls in split_labels for x in ls}))
        index = {n: i for i, n in enumerate(names)}
        values = np.full((len(frame), len(names)), np.nan)
        for row, ls in enumerate(split_labels):
            values[row, [index[x] for x in ls]] = 1.0
        frame["patient_id"] = frame["patient_id"].where(frame["patient_id"] != "", frame["path"])
        frame["study_id"] = frame["study_id"].where(frame["study_id"] != "", frame["patient_id"])
        return self.table(root, frame, values, names)

    def default_template_for(self, table: CorpusTable) -> str:
        if (table.frame["report"] != "").any():
            return "report"
        if table.label_names:
            return "class"
        raise UserError(f"{table.root} has neither captions nor labels; add sidecar .txt captions, a metadata.csv with "
                        "a text or label column, or class sub-folders, or pass --template")

    @staticmethod
    def _metadata(root: Path) -> pd.DataFrame | None:
        csv, jsonl = root / "metadata.csv", root / "metadata.jsonl"
        if csv.exists():
            raw, origin = read_csv(csv, dtype=str, keep_default_na=False), csv
        elif jsonl.exists():
            try:
                raw = pd.DataFrame([json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()])
            except json.JSONDecodeError as err:
                raise UserError(f"{jsonl} line {err.lineno}: not valid JSON ({err.msg})") from err
            origin = jsonl
        else:
            return None
        if "file_name" not in raw.columns:
            raise UserError(f"{origin} needs a file_name column (image path relative to {root})")
        caption, label = _first(raw, CAPTION_COLUMNS), _first(raw, LABEL_COLUMNS)
        if caption is None and label is None:
            raise UserError(f"{origin} needs a caption column ({', '.join(CAPTION_COLUMNS)}) or a label column "
                            f"({', '.join(LABEL_COLUMNS)})")
        split = raw.get("split", pd.Series("", index=raw.index)).fillna("").astype(str).str.strip().str.lower()
        unknown = ~split.isin(list(SPLIT_ALIASES))
        if unknown.any():
            i = int(np.flatnonzero(unknown.to_numpy())[0])
            raise UserError(f"{origin} row {i + 2}: split {split.iloc[i]!r} is not train, validation or test")
        get = lambda col: raw.get(col, pd.Series("", index=raw.index)).fillna("").astype(str)  # noqa: E731
        return pd.DataFrame({
            "path": raw["file_name"].astype(str),
            "report": caption if caption is not None else "",
            "label": label if label is not None else "",
            "patient_id": get("patient_id"),
            "study_id": get("study_id"),
            "sex": normalise_sex(get("sex")),
            "age": age_from_text(get("age")),
            "view": get("view").str.lower(),
            "split": split.map(SPLIT_ALIASES),
            "origin_file": str(origin),
            "origin_row": raw.index.to_numpy() + 2,
        })

    @staticmethod
    def _scan(root: Path) -> pd.DataFrame:
        rows = []
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
            rel = path.relative_to(root)
            sidecar = path.with_suffix(".txt")
            caption = sidecar.read_text(encoding="utf-8", errors="replace").strip() if sidecar.exists() else ""
            label = rel.parts[0] if len(rel.parts) > 1 and not sidecar.exists() else ""
            rows.append((rel.as_posix(), caption, label, str(path)))
        frame = pd.DataFrame(rows, columns=["path", "report", "label", "origin_file"])
        for col in ("patient_id", "study_id", "sex", "view", "split"):
            frame[col] = ""
        return frame
