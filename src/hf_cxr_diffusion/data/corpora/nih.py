"""NIH ChestX-ray14 (Wang et al. 2017, CVPR): ``Data_Entry_2017*.csv`` + PNGs under ``images*/``.

``Finding Labels`` holds "A|B" or "No Finding". Images may sit in ``images/`` or in the twelve
``images_001/images/`` ... ``images_012/images/`` folders of the archive. Official split:
``test_list.txt`` -> test, ``train_val_list.txt`` -> train/validation by patient hash.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from hf_cxr_diffusion.data.corpora.base import (
    Corpus, CorpusTable, age_from_text, find_one, normalise_sex, read_csv, require_dir, view_of_projection,
)
from hf_cxr_diffusion.data.labels import NIH_LABELS
from hf_cxr_diffusion.data.splits import TRAINVAL
from hf_cxr_diffusion.errors import UserError

ENTRY_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv.gz")
SPLIT_FILES = {"train_val_list.txt": TRAINVAL, "test_list.txt": "test"}


def index_images(root: Path) -> dict[str, str]:
    """File name -> path relative to ``root`` of every PNG under ``root/images*/`` (one scandir walk)."""
    index: dict[str, str] = {}
    for top in sorted(p for p in root.glob("images*") if p.is_dir()):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            rel = Path(dirpath).relative_to(root).as_posix()
            for name in filenames:
                if name.lower().endswith(".png"):
                    index.setdefault(name, f"{rel}/{name}")
    return index


class NIHChestXray14(Corpus):
    name = "nih"
    label_names = NIH_LABELS
    description = "NIH ChestX-ray14: 112,120 frontal radiographs of 30,805 patients, 14 text-mined findings."
    homepage = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
    license_note = ("Provided by the NIH Clinical Center without restriction; cite Wang et al. 2017 and acknowledge "
                    "the NIH Clinical Center as the data provider.")
    citation = ("Wang et al. ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised "
                "Classification and Localization of Common Thorax Diseases. CVPR 2017.")

    def read(self, data_dir: Path, *, reports: bool = True) -> CorpusTable:
        root = require_dir(data_dir, "NIH ChestX-ray14 folder (Data_Entry_2017*.csv, images*/)")
        entry = find_one(root, ENTRY_FILES, "NIH Data_Entry_2017 CSV", depth=0)
        raw = read_csv(entry, dtype={"Image Index": str, "Finding Labels": str, "Patient Gender": str, "View Position": str})
        for col in ("Image Index", "Finding Labels", "Patient ID"):
            if col not in raw.columns:
                raise UserError(f"{entry} has no column {col!r}; is this the NIH Data_Entry_2017 CSV?")
        values = self._labels(raw["Finding Labels"], entry)
        names = raw["Image Index"].fillna("")
        index = index_images(root)
        paths = names.map(index).fillna("images/" + names)
        age_col = next((c for c in raw.columns if c.startswith("Patient Age")), None)
        frame = pd.DataFrame({
            "path": paths,
            "patient_id": raw["Patient ID"].astype(str),
            "study_id": names.str.replace(r"\.png$", "", regex=True),
            "projection": raw.get("View Position", ""),
            "sex": normalise_sex(raw.get("Patient Gender", pd.Series("", index=raw.index))),
            "age": age_from_text(raw[age_col]) if age_col else None,
            "split": self._official_split(root, names),
            "origin_file": str(entry),
            "origin_row": raw.index.to_numpy() + 2,
        })
        frame["view"] = view_of_projection(frame["projection"])
        return self.table(root, frame, values)

    @staticmethod
    def _labels(findings: pd.Series, entry: Path) -> np.ndarray:
        dummies = findings.fillna("").str.get_dummies(sep="|")
        unknown = [c for c in dummies.columns if c not in NIH_LABELS]
        if unknown:
            line = int(np.flatnonzero(dummies[unknown[0]].to_numpy())[0]) + 2
            raise UserError(f"{entry} line {line} column 'Finding Labels': unknown finding {unknown[0]!r}; "
                            f"expected '|'-separated names from {', '.join(NIH_LABELS)}")
        dummies = dummies.reindex(columns=list(NIH_LABELS), fill_value=0)
        return np.where(dummies.to_numpy() > 0, 1.0, np.nan)

    @staticmethod
    def _official_split(root: Path, names: pd.Series) -> pd.Series | str:
        split = pd.Series("", index=names.index, dtype=object)
        for file, value in SPLIT_FILES.items():
            path = root / file
            if path.exists():
                listed = set(path.read_text().split())
                split[names.isin(listed)] = value
        return split
