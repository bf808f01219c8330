"""IU X-ray / OpenI (Demner-Fushman et al. 2016, JAMIA): NLMCXR report XML + ``NLMCXR_png/*.png``.

Reports come from ``ecgen-radiology/*.xml`` (or the ``NLMCXR_reports.tgz`` archive itself). Each report
is one patient; its ``parentImage`` ids name the PNGs. ``report`` is FINDINGS then IMPRESSION with the
"XXXX" anonymisation tokens kept verbatim. Labels come from the MeSH ``major`` headings. Views: the
t-SNE derived view of ``nlmcxr_tsne_pa.csv.gz`` where known, else the DICOM View Position of
``nlmcxr_dicom_metadata.csv.gz`` (both looked up in the data folder, then in torchxrayvision's data).
"""

from __future__ import annotations

import importlib.util
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from hf_cxr_diffusion.data.corpora.base import Corpus, CorpusTable, read_csv, require_dir, view_of_projection
from hf_cxr_diffusion.errors import UserError

IU_LABELS: tuple[str, ...] = (
    "No Finding", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Fracture",
    "Granuloma", "Calcified Granuloma", "Hernia", "Infiltration", "Lung Opacity", "Mass", "Nodule",
    "Pleural Effusion", "Pneumonia", "Pneumothorax", "Airspace Disease", "Support Devices",
)
#: lower-cased MeSH major heading (text before the first "/") -> label
MESH_TO_LABEL: dict[str, str] = {
    "normal": "No Finding", "pulmonary atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly",
    "consolidation": "Consolidation", "pulmonary edema": "Edema", "edema": "Edema", "emphysema": "Emphysema",
    "pulmonary emphysema": "Emphysema", "pulmonary fibrosis": "Fibrosis", "fibrosis": "Fibrosis",
    "fractures, bone": "Fracture", "granuloma": "Granuloma", "granulomatous disease": "Granuloma",
    "calcified granuloma": "Calcified Granuloma", "hernia, hiatal": "Hernia", "hernia": "Hernia",
    "infiltrate": "Infiltration", "opacity": "Lung Opacity", "mass": "Mass", "nodule": "Nodule",
    "pleural effusion": "Pleural Effusion", "pneumonia": "Pneumonia", "pneumothorax": "Pneumothorax",
    "airspace disease": "Airspace Disease", "catheters, indwelling": "Support Devices",
    "surgical instruments": "Support Devices", "implanted medical device": "Support Devices",
}
PNG_DIRS = ("NLMCXR_png", "images", ".")


def _xtv_data(name: str) -> Path | None:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    return path if path.exists() else None


def _metadata_file(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / name.removesuffix(".gz")):
        if candidate.exists():
            return candidate
    return _xtv_data(name)


def iter_report_xml(root: Path) -> Iterator[tuple[str, bytes]]:
    """(file name, XML bytes) of every report, from ``ecgen-radiology/`` or ``NLMCXR_reports.tgz``."""
    folder = root / "ecgen-radiology"
    if folder.is_dir():
        for path in sorted(folder.glob("*.xml")):
            yield str(path), path.read_bytes()
        return
    archive = root / "NLMCXR_reports.tgz"
    if not archive.exists():
        raise UserError(f"no ecgen-radiology/ folder or NLMCXR_reports.tgz in {root}; download the OpenI reports")
    with tarfile.open(archive, "r:gz") as tar:
        for member in sorted((m for m in tar.getmembers() if m.name.endswith(".xml")), key=lambda m: m.name):
            yield f"{archive}:{member.name}", tar.extractfile(member).read()


def parse_report(xml: bytes, origin: str) -> dict:
    """One NLMCXR XML report -> uid, findings, impression, MeSH major headings, image ids."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise UserError(f"{origin}: not a valid NLMCXR report XML ({err})") from err
    uid = root.find("uId")
    sections = {node.get("Label", "").upper(): (node.text or "") for node in root.iter("AbstractText")}
    return {
        "uid": uid.get("id") if uid is not None else Path(origin).stem,
        "report": " ".join(" ".join((sections.get("FINDINGS", ""), sections.get("IMPRESSION", ""))).split()),
        "mesh": [(n.text or "").split("/")[0].strip().lower() for n in root.iter("major")],
        "images": [n.get("id") for n in root.iter("parentImage")],
        "origin": origin,
    }


class IUXray(Corpus):
    name = "iu_xray"
    label_names = IU_LABELS
    default_template = "report"
    description = "Indiana University chest X-ray collection (OpenI): 3,955 reports with 7,470 frontal and lateral images."
    homepage = "https://openi.nlm.nih.gov/faq"
    license_note = "CC BY-NC-ND 4.0 (Indiana University / NLM OpenI): non-commercial use, no derivatives."
    citation = ("Demner-Fushman et al. Preparing a collection of radiology examinations for distribution and retrieval. "
                "JAMIA 2016.")

    def read(self, data_dir: Path, *, reports: bool = True) -> CorpusTable:
        root = require_dir(data_dir, "IU X-ray folder (ecgen-radiology/ or NLMCXR_reports.tgz, NLMCXR_png/)")
        png_dir = next(d for d in PNG_DIRS if (root / d).is_dir())
        rows, values = [], []
        index = {name: i for i, name in enumerate(IU_LABELS)}
        for origin, xml in iter_report_xml(root):
            rep = parse_report(xml, origin)
            vec = np.full(len(IU_LABELS), np.nan)
            for term in rep["mesh"]:
                if term in MESH_TO_LABEL:
                    vec[index[MESH_TO_LABEL[term]]] = 1.0
            for image_id in rep["images"]:
                rel = f"{image_id}.png" if png_dir == "." else f"{png_dir}/{image_id}.png"
                rows.append((rel, image_id, rep["uid"], rep["report"], origin))
                values.append(vec)
        frame = pd.DataFrame(rows, columns=["path", "image_id", "patient_id", "report", "origin_file"])
        frame["study_id"] = frame["patient_id"]
        frame["projection"], frame["view"] = self._views(root, frame["image_id"])
        return self.table(root, frame.drop(columns="image_id"), np.array(values).reshape(len(rows), len(IU_LABELS)))

    @staticmethod
    def _views(root: Path, image_ids: pd.Series) -> tuple[pd.Series, pd.Series]:
        projection = pd.Series("", index=image_ids.index, dtype=object)
        dicom = _metadata_file(root, "nlmcxr_dicom_metadata.csv.gz")
        if dicom is not None:
            meta = read_csv(dicom, usecols=["imageid", "View Position"], dtype=str).drop_duplicates("imageid")
            # the DICOM table drops the "_<n>" after the report number: CXR1_1_IM-0001-3001 -> CXR1_IM-0001-3001
            keys = image_ids.str.replace(r"^(CXR\d+)_\d+_", r"\1_", regex=True)
            projection = keys.map(meta.set_index("imageid")["View Position"]).fillna("")
        view = view_of_projection(projection)
        tsne = _metadata_file(root, "nlmcxr_tsne_pa.csv.gz")
        if tsne is not None:
            derived = image_ids.map(read_csv(tsne, dtype=str).drop_duplicates("imageid").set_index("imageid")["tsne-view"])
            view = derived.map({"PA": "frontal", "L": "lateral"}).fillna(view)
        return projection, view
