"""Corpus fixtures in their REAL on-disk layouts, with the real label files shipped by torchxrayvision.

Images are small synthetic arrays (never real patient images) written at the real relative paths.
"""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image


def xrv_file(name: str) -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / name


def synthetic_image(seed: int, size: tuple[int, int] = (96, 80)) -> np.ndarray:
    """A deterministic 8-bit gradient + noise image of ``size`` (width, height)."""
    w, h = size
    rng = np.random.default_rng(seed)
    grad = np.linspace(0, 200, w)[None, :] + np.linspace(0, 50, h)[:, None]
    return np.clip(grad + rng.integers(0, 5, (h, w)), 0, 255).astype(np.uint8)


def write_images(root: Path, rel_paths, size: tuple[int, int] = (96, 80)) -> None:
    for i, rel in enumerate(rel_paths):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_image(i, size)).save(path)


@pytest.fixture(scope="session")
def chexpert_frame() -> pd.DataFrame:
    return pd.read_csv(xrv_file("chexpert_train.csv.gz"))


@pytest.fixture(scope="session")
def nih_frame() -> pd.DataFrame:
    return pd.read_csv(xrv_file("Data_Entry_2017_v2020.csv.gz"))


@pytest.fixture(scope="session")
def chexpert_full_dir(tmp_path_factory) -> Path:
    """The full shipped CheXpert train.csv (223k rows) at CheXpert-v1.0-small/train.csv.gz, no images."""
    root = tmp_path_factory.mktemp("chexpert_full")
    (root / "CheXpert-v1.0-small").mkdir()
    (root / "CheXpert-v1.0-small" / "train.csv.gz").symlink_to(xrv_file("chexpert_train.csv.gz"))
    return root


def make_chexpert(root: Path, chexpert_frame: pd.DataFrame, n: int = 60) -> Path:
    """CheXpert-v1.0-small/{train,valid}.csv from the first real rows, blank images at their paths."""
    folder = root / "CheXpert-v1.0-small"
    folder.mkdir(parents=True)
    train = chexpert_frame.head(n)
    train.to_csv(folder / "train.csv", index=False)
    valid = chexpert_frame.iloc[n:n + 8].copy()
    valid["Path"] = valid["Path"].str.replace(r"train/patient(\d+)", lambda m: f"valid/patient{64540 + int(m.group(1))}", regex=True)
    valid.to_csv(folder / "valid.csv", index=False)
    write_images(root, list(train["Path"]) + list(valid["Path"]))
    return root


@pytest.fixture
def chexpert_dir(tmp_path, chexpert_frame) -> Path:
    return make_chexpert(tmp_path / "chexpert", chexpert_frame)


@pytest.fixture
def nih_dir(tmp_path, nih_frame) -> Path:
    """Data_Entry_2017_v2020.csv (first real rows), images_001/images/*.png, official split lists."""
    root = tmp_path / "nih"
    root.mkdir()
    rows = nih_frame.head(45)
    rows.to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    test_patients = {3, 11}
    is_test = rows["Patient ID"].isin(test_patients)
    (root / "test_list.txt").write_text("\n".join(rows.loc[is_test, "Image Index"]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(rows.loc[~is_test, "Image Index"]) + "\n")
    half = len(rows) // 2
    write_images(root, [f"images_001/images/{n}" for n in rows["Image Index"][:half]])
    write_images(root, [f"images_002/images/{n}" for n in rows["Image Index"][half:]])
    return root


IU_REPORTS = [f"ecgen-radiology/{i}.xml" for i in range(1, 13)]


@pytest.fixture
def iu_dir(tmp_path) -> Path:
    """ecgen-radiology/*.xml (real reports from NLMCXR_reports.tgz) + NLMCXR_png/<image id>.png."""
    import xml.etree.ElementTree as ET

    root = tmp_path / "iu"
    with tarfile.open(xrv_file("NLMCXR_reports.tgz")) as tar:
        members = [tar.getmember(name) for name in IU_REPORTS]
        tar.extractall(root, members=members, filter="data")
    ids = [img.get("id") for name in IU_REPORTS for img in ET.parse(root / name).getroot().iter("parentImage")]
    write_images(root, [f"NLMCXR_png/{i}.png" for i in ids])
    return root


MONTGOMERY_READINGS = {
    "MCUCXR_0001_0": "Patient's Sex: F\nPatient's Age: 040Y\nnormal\n",
    "MCUCXR_0002_0": "Patient's Sex: M\nPatient's Age: 058Y\nnormal\n",
    "MCUCXR_0003_0": "Patient's Sex: F\nPatient's Age: 021Y\nnormal\n",
    "MCUCXR_0104_1": ("Patient's Sex: M\nPatient's Age: 032Y\nextensive infiltrates bilaterally with large cavity in RUL\n"
                      "and a moderate pleural effusion on the left. Active TB, cavitary.\n"),
    "MCUCXR_0105_1": "Patient's Sex: F\nPatient's Age: 067Y\nleft upper lobe   fibrocavitary disease\n",
    "MCUCXR_0106_1": "Patient's Sex: M\nPatient's Age: 045Y\nbilateral upper lobe infiltrates\n",
}


@pytest.fixture
def montgomery_dir(tmp_path) -> Path:
    """MontgomerySet/CXR_png/MCUCXR_NNNN_{0,1}.png + ClinicalReadings/*.txt."""
    root = tmp_path / "montgomery" / "MontgomerySet"
    (root / "ClinicalReadings").mkdir(parents=True)
    for stem, text in MONTGOMERY_READINGS.items():
        (root / "ClinicalReadings" / f"{stem}.txt").write_text(text)
    write_images(root, [f"CXR_png/{stem}.png" for stem in MONTGOMERY_READINGS], size=(120, 100))
    return root.parent


PNEUMONIA_FILES = {
    "train": {"NORMAL": ["IM-0115-0001.jpeg", "IM-0117-0001.jpeg", "NORMAL2-IM-0283-0001.jpeg"],
              "PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_bacteria_2.jpeg", "person3_virus_6.jpeg"]},
    "val": {"NORMAL": ["NORMAL2-IM-1427-0001.jpeg"], "PNEUMONIA": ["person1946_bacteria_4874.jpeg"]},
    "test": {"NORMAL": ["IM-0001-0001.jpeg", "IM-0003-0001.jpeg"], "PNEUMONIA": ["person100_bacteria_475.jpeg"]},
}


@pytest.fixture
def pneumonia_dir(tmp_path) -> Path:
    """chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg (Kaggle layout)."""
    root = tmp_path / "pneumonia"
    rels = [f"chest_xray/{s}/{c}/{f}" for s, classes in PNEUMONIA_FILES.items() for c, files in classes.items() for f in files]
    write_images(root, rels)
    return root


MIMIC_STUDIES = [  # subject, study, dicoms with view, split, labels (Cardiomegaly, Edema, No Finding)
    ("10000032", "50414267", [("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "PA"), ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "LATERAL")], "train", (1.0, -1.0, None)),
    ("10000032", "53189527", [("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "AP")], "train", (None, None, 1.0)),
    ("10000764", "57375967", [("096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "AP")], "validate", (0.0, 1.0, None)),
    ("10000898", "50771383", [("b11b8d7b-8e53e9b8-4a6d8a43-2f4b8a1a-6b3b3f5e", "PA")], "test", (None, None, 1.0)),
]
MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 FINDINGS:
 
 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:
 
 No acute cardiopulmonary process.
"""


@pytest.fixture
def mimic_dir(tmp_path) -> Path:
    """mimic-cxr-2.0.0-{chexpert,metadata,split}.csv.gz + files/pXX/pSUBJECT/sSTUDY/DICOM.jpg (+ one report)."""
    from hf_cxr_diffusion.data.labels import CHEXPERT_LABELS

    root = tmp_path / "mimic"
    root.mkdir()
    labels, meta, split, paths = [], [], [], []
    for subject, study, dicoms, sp, (cardio, edema, nofind) in MIMIC_STUDIES:
        row = {"subject_id": subject, "study_id": study, **{n: None for n in CHEXPERT_LABELS}}
        row.update({"Cardiomegaly": cardio, "Edema": edema, "No Finding": nofind})
        labels.append(row)
        for dicom, view in dicoms:
            meta.append({"dicom_id": dicom, "subject_id": subject, "study_id": study, "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                         "ViewPosition": view, "Rows": 80, "Columns": 96})
            split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": sp})
            paths.append(f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg")
    for name, rows in (("chexpert", labels), ("metadata", meta), ("split", split)):
        pd.DataFrame(rows).to_csv(root / f"mimic-cxr-2.0.0-{name}.csv.gz", index=False)
    write_images(root, paths)
    (root / "files/p10/p10000032/s50414267.txt").write_text(MIMIC_REPORT)
    return root


@pytest.fixture
def folder_sidecar_dir(tmp_path) -> Path:
    """images with sidecar .txt captions."""
    root = tmp_path / "folder_txt"
    names = [f"case{i:02d}.png" for i in range(6)]
    write_images(root, names)
    for i, name in enumerate(names):
        (root / name).with_suffix(".txt").write_text(f"chest x-ray  case {i}\n with  small effusion")
    return root


@pytest.fixture
def folder_metadata_dir(tmp_path) -> Path:
    """metadata.csv with file_name, caption and labels columns (plus patient ids)."""
    root = tmp_path / "folder_csv"
    names = [f"img/{i:03d}.jpg" for i in range(8)]
    write_images(root, names)
    pd.DataFrame({
        "file_name": names,
        "caption": [f"export {i}" for i in range(8)],
        "label": ["Effusion|Nodule", "", "Nodule", "Effusion", "", "Nodule", "", "Effusion"],
        "patient_id": [f"P{i // 2}" for i in range(8)],
        "sex": ["M", "F"] * 4,
        "age": [30 + i for i in range(8)],
    }).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture
def folder_jsonl_dir(tmp_path) -> Path:
    root = tmp_path / "folder_jsonl"
    names = [f"{i}.png" for i in range(5)]
    write_images(root, names)
    lines = [json.dumps({"file_name": n, "text": f"caption {i}", "split": "test" if i == 4 else "train"}) for i, n in enumerate(names)]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def folder_classes_dir(tmp_path) -> Path:
    """class sub-folders <class>/*.png (DreamBooth / ImageFolder style)."""
    root = tmp_path / "folder_classes"
    write_images(root, [f"{c}/{i}.png" for c in ("normal", "effusion") for i in range(3)])
    return root


@pytest.fixture(scope="session")
def tokenizer():
    """The cached offline CLIP tokenizer used by the prompt code."""
    from hf_cxr_diffusion.data.prompts import clip_tokenizer

    return clip_tokenizer()


@pytest.fixture(scope="session")
def xrv_data() -> Path:
    """torchxrayvision's data folder (real label files)."""
    return xrv_file("chexpert_train.csv.gz").parent
