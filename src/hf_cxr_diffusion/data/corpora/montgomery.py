"""Montgomery County TB set (Jaeger et al. 2014, QIMS): ``CXR_png/MCUCXR_NNNN_{0,1}.png`` + ``ClinicalReadings/*.txt``.

The file-name suffix is the label (``_1`` tuberculosis, ``_0`` normal). Each reading file starts with
``Patient's Sex: M`` and ``Patient's Age: 032Y`` lines followed by the radiologist's findings, which
become ``report``. The Shenzhen set (``CHNCXR_NNNN_{0,1}.png``) uses the same layout and reader.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from hf_cxr_diffusion.data.corpora.base import Corpus, CorpusTable, find_one, normalise_sex, require_dir
from hf_cxr_diffusion.errors import UserError

logger = logging.getLogger(__name__)
_SEX = re.compile(r"sex\s*:\s*(\w+)", re.IGNORECASE)
_AGE = re.compile(r"age\s*:\s*0*(\d+)", re.IGNORECASE)
_HEADER = re.compile(r"^\s*patient\W?s\s+(sex|age)\b", re.IGNORECASE)


def parse_reading(text: str) -> tuple[str, int | None, str]:
    """A clinical reading file -> (sex letter, age in years, findings text)."""
    sex, age = _SEX.search(text), _AGE.search(text)
    findings = " ".join(line.strip() for line in text.splitlines() if line.strip() and not _HEADER.match(line))
    return (sex.group(1) if sex else ""), (int(age.group(1)) if age else None), findings


class Montgomery(Corpus):
    name = "montgomery"
    label_names = ("Tuberculosis",)
    default_template = "age:{age}, gender:{sex}, findings:{report}"
    description = "Montgomery County (Maryland) TB screening set: 138 frontal chest X-rays, 58 with tuberculosis."
    homepage = "https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#tuberculosis-image-data-sets"
    license_note = "Public release of the U.S. National Library of Medicine; cite Jaeger et al. 2014."
    citation = ("Jaeger et al. Two public chest X-ray datasets for computer-aided screening of pulmonary diseases. "
                "Quant Imaging Med Surg 2014.")

    def read(self, data_dir: Path, *, reports: bool = True) -> CorpusTable:
        data_dir = require_dir(data_dir, "MontgomerySet folder (CXR_png/, ClinicalReadings/)")
        png_dir = find_one(data_dir, ["CXR_png"], "CXR_png folder")
        root, readings = png_dir.parent, png_dir.parent / "ClinicalReadings"
        rows, values, no_reading = [], [], 0
        for path in sorted(png_dir.glob("*.png")):
            match = re.fullmatch(r"(.+)_([01])", path.stem)
            if match is None:
                raise UserError(f"{path}: file name must end in _0 (normal) or _1 (tuberculosis), like MCUCXR_0001_0.png")
            txt = readings / f"{path.stem}.txt"
            if txt.exists():
                sex, age, report = parse_reading(txt.read_text(encoding="utf-8", errors="replace"))
            else:
                sex, age, report, no_reading = "", None, "", no_reading + 1
            rows.append((path.relative_to(root).as_posix(), match.group(1), sex, age, report, str(path)))
            values.append(float(match.group(2)))
        if not rows:
            raise UserError(f"no PNG images in {png_dir}; check --data-dir")
        if no_reading:
            logger.warning("%d image(s) of %s have no ClinicalReadings/*.txt (sex, age and report left empty)", no_reading, root)
        frame = pd.DataFrame(rows, columns=["path", "patient_id", "sex", "age", "report", "origin_file"])
        frame["sex"] = normalise_sex(frame["sex"])
        frame["study_id"] = frame["patient_id"]
        frame["view"], frame["projection"] = "frontal", "PA"
        return self.table(root, frame, np.array(values)[:, None])
