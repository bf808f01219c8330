"""CheXpert (Irvin et al. 2019, AAAI): ``CheXpert-v1.0[-small]/{train,valid}.csv`` + ``{train,valid}/patientN/studyM/viewK_*.jpg``.

14 observations with values 1 / 0 / -1 (uncertain) / blank; patient and study ids come from the path.
Official split: ``valid.csv`` (radiologist-labelled) is the held-out ``test`` split; ``train.csv`` patients
are divided between train and validation by patient hash.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hf_cxr_diffusion.data.corpora.base import CheXpertLabelledCorpus, CorpusTable, check_paths, extract, find_one, normalise_sex, read_csv, require_dir
from hf_cxr_diffusion.data.splits import TRAINVAL
from hf_cxr_diffusion.errors import UserError

#: official CSV -> split of its rows
CHEXPERT_FILES: dict[str, str] = {"train.csv": TRAINVAL, "valid.csv": "test"}


class CheXpert(CheXpertLabelledCorpus):
    name = "chexpert"
    description = "CheXpert: 224,316 chest radiographs of 65,240 patients (Stanford Hospital), 14 labeller-extracted observations."
    homepage = "https://stanfordmlgroup.github.io/competitions/chexpert/"
    license_note = ("Stanford University School of Medicine CheXpert Dataset Research Use Agreement: research, "
                    "non-commercial use only; no redistribution of the images.")
    citation = "Irvin et al. CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and Expert Comparison. AAAI 2019."

    def read(self, data_dir: Path, *, reports: bool = True) -> CorpusTable:
        data_dir = require_dir(data_dir, "folder holding CheXpert-v1.0-small/ (or CheXpert-v1.0/)")
        train_csv = find_one(data_dir, ["train.csv", "train.csv.gz"], "CheXpert train.csv")
        csv_dir = train_csv.parent
        frames, values = [], []
        for name, split in CHEXPERT_FILES.items():
            path = next((p for p in (csv_dir / name, csv_dir / f"{name}.gz") if p.exists()), None)
            if path is None:
                continue
            raw = read_csv(path, dtype={c: str for c in ("Path", "Sex", "Frontal/Lateral", "AP/PA")})
            values.append(self.parse_labels(raw, path))
            frames.append(self._frame(raw, path, csv_dir, split))
        frame = pd.concat(frames, ignore_index=True)
        return self.table(csv_dir.parent, frame, np.concatenate(values))

    @staticmethod
    def _frame(raw: pd.DataFrame, path: Path, csv_dir: Path, split: str) -> pd.DataFrame:
        for col in ("Path", "Sex", "Age", "Frontal/Lateral"):
            if col not in raw.columns:
                raise UserError(f"{path} has no column {col!r}; is this a CheXpert CSV?")
        # paths start with the release folder name; map it onto the folder the CSV actually lives in
        rel = raw["Path"].fillna("").str.replace(r"^CheXpert[^/]*/", f"{csv_dir.name}/", regex=True)
        rel = check_paths(pd.DataFrame({"path": rel, "origin_file": str(path), "origin_row": raw.index + 2}), csv_dir.parent)
        ids = extract(rel, r"(?P<patient>patient\d+)/(?P<study>study\d+)/")
        bad = ids["patient"].isna()
        if bad.any():
            line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            raise UserError(f"{path} line {line}: Path {raw['Path'].iloc[line - 2]!r} has no patientN/studyM/ part; "
                            "is this a CheXpert CSV?")
        return pd.DataFrame({
            "path": rel,
            "patient_id": ids["patient"],
            "study_id": ids["patient"] + "/" + ids["study"],
            "view": raw["Frontal/Lateral"].fillna("").str.lower(),
            "projection": raw.get("AP/PA", pd.Series("", index=raw.index)).fillna(""),
            "sex": normalise_sex(raw["Sex"]),
            "age": raw["Age"],
            "split": split,
            "origin_file": str(path),
            "origin_row": raw.index.to_numpy() + 2,
        })
