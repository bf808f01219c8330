"""Pediatric pneumonia folders (Kermany et al. 2018, Cell; Kaggle "chest-xray-pneumonia").

Layout ``[chest_xray/]{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``; the folders are the official split.
Patient ids: ``person12_bacteria_45.jpeg`` -> ``person12``; ``IM-0115-0001.jpeg`` -> ``IM-0115``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hf_cxr_diffusion.data.corpora.base import IMAGE_SUFFIXES, Corpus, CorpusTable, find_one, require_dir
from hf_cxr_diffusion.errors import UserError

SPLIT_DIRS = {"train": "train", "val": "validation", "test": "test"}
CLASSES = ("NORMAL", "PNEUMONIA")


class PneumoniaFolders(Corpus):
    name = "pneumonia"
    label_names = ("Pneumonia",)
    description = "Pediatric chest X-rays (Guangzhou Women and Children's Medical Center), NORMAL vs PNEUMONIA folders."
    homepage = "https://data.mendeley.com/datasets/rscbjbr9sj/2"
    license_note = "CC BY 4.0 (Mendeley Data release of Kermany et al.)."
    citation = ("Kermany et al. Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning. "
                "Cell 2018.")

    def read(self, data_dir: Path, *, reports: bool = True) -> CorpusTable:
        data_dir = require_dir(data_dir, "folder holding {train,val,test}/{NORMAL,PNEUMONIA}/")
        root = find_one(data_dir, ["train/NORMAL", "train/PNEUMONIA", "test/NORMAL"], "pneumonia split folders").parent.parent
        rows = []
        for folder, split in SPLIT_DIRS.items():
            for cls in CLASSES:
                base = root / folder / cls
                if not base.is_dir():
                    continue
                for path in sorted(p for p in base.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                    rows.append((path.relative_to(root).as_posix(), path.stem, split, cls))
        if not rows:
            raise UserError(f"no images under {root}/{{train,val,test}}/{{NORMAL,PNEUMONIA}}/; check --data-dir")
        frame = pd.DataFrame(rows, columns=["path", "stem", "split", "label"])
        person = frame["stem"].str.extract(r"^(person\d+)", expand=False)
        frame["patient_id"] = person.fillna(frame["stem"].str.replace(r"-\d+$", "", regex=True))
        frame["study_id"] = frame["stem"]
        frame["view"], frame["projection"] = "frontal", "AP"
        frame["origin_file"] = frame["path"]
        values = np.where(frame["label"].to_numpy() == "PNEUMONIA", 1.0, 0.0)[:, None]
        return self.table(root, frame.drop(columns="stem"), values)
