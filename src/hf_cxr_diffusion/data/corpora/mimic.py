"""MIMIC-CXR-JPG 2.x (Johnson et al. 2019): chexpert, metadata and split CSVs + ``files/pXX/pSUBJECT/sSTUDY/DICOM.jpg``.

Labels are the study-level CheXpert-labeller values (1 / 0 / -1 / blank) joined to every image of the
study; views come from ``ViewPosition``; the official split (train / validate / test) is kept. Free-text
reports (``files/pXX/pSUBJECT/sSTUDY.txt`` from MIMIC-CXR, here or under ``mimic-cxr-reports/``) fill
``report`` with the FINDINGS and IMPRESSION sections when present.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from hf_cxr_diffusion.data.corpora.base import CheXpertLabelledCorpus, CorpusTable, find_one, read_csv, require_dir, view_of_projection
from hf_cxr_diffusion.errors import UserError

PREFIX = "mimic-cxr-2.0.0"
SPLIT_NAMES = {"train": "train", "validate": "validation", "test": "test"}
_SECTION = re.compile(r"^\s*(FINDINGS|IMPRESSION)\s*:(.*?)(?=^\s*[A-Z][A-Z /&]+\s*:|\Z)", re.MULTILINE | re.DOTALL)


def report_sections(text: str) -> str:
    """FINDINGS then IMPRESSION of a MIMIC-CXR report, whitespace-normalised ("" when neither is present)."""
    found = {name: " ".join(body.split()) for name, body in _SECTION.findall(text)}
    return " ".join(t for t in (found.get("FINDINGS", ""), found.get("IMPRESSION", "")) if t)


def _csv(root: Path, kind: str) -> Path:
    return find_one(root, [f"{PREFIX}-{kind}.csv", f"{PREFIX}-{kind}.csv.gz"], f"MIMIC-CXR-JPG {kind} CSV")


class MIMICCXRJPG(CheXpertLabelledCorpus):
    name = "mimic"
    description = "MIMIC-CXR-JPG: 377,110 chest radiographs of 65,379 patients (Beth Israel Deaconess), CheXpert labels."
    homepage = "https://physionet.org/content/mimic-cxr-jpg/"
    license_note = ("PhysioNet Credentialed Health Data License 1.5.0: credentialed access, CITI training and a signed "
                    "data use agreement; do not share the images or derived images publicly.")
    citation = "Johnson et al. MIMIC-CXR-JPG, a large publicly available database of labeled chest radiographs. arXiv:1901.07042."

    def read(self, data_dir: Path, *, reports: bool = True) -> CorpusTable:
        data_dir = require_dir(data_dir, "MIMIC-CXR-JPG folder (mimic-cxr-2.0.0-*.csv.gz, files/)")
        meta_csv, label_csv = _csv(data_dir, "metadata"), _csv(data_dir, "chexpert")
        root = meta_csv.parent
        meta = read_csv(meta_csv, dtype={"dicom_id": str, "subject_id": str, "study_id": str, "ViewPosition": str})
        labels = read_csv(label_csv, dtype={"subject_id": str, "study_id": str})
        for file, frame, cols in ((meta_csv, meta, ("dicom_id", "subject_id", "study_id")), (label_csv, labels, ("subject_id", "study_id"))):
            missing = [c for c in cols if c not in frame.columns]
            if missing:
                raise UserError(f"{file} has no column(s) {', '.join(missing)}; is this a MIMIC-CXR-JPG CSV?")
        values = self.parse_labels(labels, label_csv)
        keys = labels["subject_id"] + "/" + labels["study_id"]
        row_of = pd.Series(np.arange(len(labels)), index=keys).groupby(level=0).first()
        pos = (meta["subject_id"] + "/" + meta["study_id"]).map(row_of)
        studied = np.where(pos.notna(), pos.fillna(0).astype(int), -1)
        image_values = np.where((studied >= 0)[:, None], values[np.maximum(studied, 0)], np.nan)
        subject, study = "p" + meta["subject_id"], "s" + meta["study_id"]
        study_dir = "files/" + subject.str[:3] + "/" + subject + "/" + study
        frame = pd.DataFrame({
            "path": study_dir + "/" + meta["dicom_id"] + ".jpg",
            "patient_id": meta["subject_id"],
            "study_id": meta["study_id"],
            "projection": meta.get("ViewPosition", pd.Series("", index=meta.index)).fillna(""),
            "split": self._split(data_dir, meta),
            "origin_file": str(meta_csv),
            "origin_row": meta.index.to_numpy() + 2,
        })
        frame["view"] = view_of_projection(frame["projection"])
        if reports:
            frame["report"] = self._reports(root, study_dir)
        return self.table(root, frame, image_values)

    @staticmethod
    def _split(data_dir: Path, meta: pd.DataFrame) -> pd.Series:
        try:
            split_csv = _csv(data_dir, "split")
        except UserError:
            return pd.Series("", index=meta.index)
        split = read_csv(split_csv, dtype=str).drop_duplicates("dicom_id").set_index("dicom_id")["split"]
        return meta["dicom_id"].map(split).map(SPLIT_NAMES).fillna("")

    @staticmethod
    def _reports(root: Path, study_dir: pd.Series) -> pd.Series:
        texts: dict[str, str] = {}
        for rel in pd.unique(study_dir):
            for base in (root, root / "mimic-cxr-reports"):
                path = base / f"{rel}.txt"
                if path.exists():
                    texts[rel] = report_sections(path.read_text(encoding="utf-8", errors="replace"))
                    break
        return study_dir.map(texts).fillna("")
