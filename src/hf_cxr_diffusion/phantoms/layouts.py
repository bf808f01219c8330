"""The label rows and file layout of each phantom corpus (``chexpert``, ``nih``, ``pneumonia``).

Each writer returns the corpus's :class:`~hf_cxr_diffusion.phantoms.manifest.PhantomRecord` objects and its
label/list files as text; :func:`~hf_cxr_diffusion.phantoms.corpus.make_phantoms` draws and writes them. The
module docstring of :mod:`hf_cxr_diffusion.phantoms.corpus` describes each layout and its sources.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from hf_cxr_diffusion.data.labels import CHEXPERT_LABELS
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.phantoms.draw import stable_seed
from hf_cxr_diffusion.phantoms.manifest import PhantomRecord, csv_text

logger = logging.getLogger(__name__)

#: the 14 CheXpert observation columns, in the file's order (the one CheXpert label list)
CHEXPERT_OBSERVATIONS: tuple[str, ...] = CHEXPERT_LABELS
#: severity used to draw an uncertain (-1.0) CheXpert label: a faint sign
UNCERTAIN_SEVERITY = 0.5
#: NIH ChestX-ray14 label -> phantom finding
NIH_TO_FINDING: dict[str, str] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Effusion": "Pleural Effusion",
    "Emphysema": "Emphysema",
    "Fibrosis": "Fibrosis",
    "Hernia": "Hernia",
    "Infiltration": "Infiltration",
    "Mass": "Mass",
    "Nodule": "Nodule",
    "Pleural_Thickening": "Pleural Other",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
}
CHEXPERT_ROOT = "CheXpert-v1.0-small"
NIH_CSV = "Data_Entry_2017_v2020.csv"
NIH_TEST_PERCENT = 20


def shipped_label_file(name: str) -> Path:
    """Path of a label file shipped inside the installed ``torchxrayvision`` package (``data/<name>``)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("torchxrayvision is not installed; it ships the real label files the phantoms use (pip install torchxrayvision)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise UserError(f"{path} is missing from the torchxrayvision install; reinstall torchxrayvision")
    return path


@functools.lru_cache(maxsize=4)
def read_shipped_labels(name: str) -> pd.DataFrame:
    """A shipped label file read verbatim: every value a string, blanks stay ``""``."""
    return pd.read_csv(shipped_label_file(name), dtype=str, keep_default_na=False)


def chexpert_findings(row: Mapping[str, str]) -> dict[str, float]:
    """Findings to draw for a CheXpert row: 1.0 -> 1, -1.0 -> :data:`UNCERTAIN_SEVERITY`, 0.0/blank -> none."""
    out = {}
    for name in CHEXPERT_OBSERVATIONS[1:]:
        value = str(row.get(name, "")).strip()
        if value in ("1", "1.0"):
            out[name] = 1.0
        elif value in ("-1", "-1.0"):
            out[name] = UNCERTAIN_SEVERITY
    return out


def nih_findings(finding_labels: str) -> dict[str, float]:
    """Findings to draw for an NIH ``Finding Labels`` value such as ``"Effusion|Infiltration"``."""
    labels = [label.strip() for label in finding_labels.split("|") if label.strip()]
    unknown = sorted(set(labels) - set(NIH_TO_FINDING) - {"No Finding"})
    if unknown:
        raise UserError(f"unknown NIH label(s) {unknown} in Finding Labels {finding_labels!r}")
    return {NIH_TO_FINDING[label]: 1.0 for label in labels if label != "No Finding"}


def _sex(value: str) -> str:
    """``male`` / ``female`` from a label file's sex column, ``""`` when unknown."""
    value = value.strip().lower()
    return {"m": "male", "f": "female"}.get(value[:1], "")


def _sample_rows(frame: pd.DataFrame, n: int, rng: np.random.Generator, what: str) -> pd.DataFrame:
    if n > len(frame):
        raise UserError(f"--n {n} is larger than the {len(frame)} {what} rows available; use a smaller --n")
    return frame.iloc[np.sort(rng.permutation(len(frame))[:n])]


# ---------------------------------------------------------------- chexpert
@functools.lru_cache(maxsize=1)
def _chexpert_frontal() -> tuple[pd.DataFrame, pd.Series]:
    """Frontal rows of the shipped CheXpert file and their patient ids (lateral rows are never drawn)."""
    labels = read_shipped_labels("chexpert_train.csv.gz")
    frontal = labels[labels["Frontal/Lateral"] == "Frontal"]
    logger.info("CheXpert: sampling from %d frontal rows (%d lateral rows not used)", len(frontal), len(labels) - len(frontal))
    return frontal, frontal["Path"].str.extract(r"(patient\d+)", expand=False)


def _only_findings(frame: pd.DataFrame, columns: Sequence[str], allowed: Sequence[str] | None) -> np.ndarray:
    """Rows none of whose positive or uncertain labels lies outside ``allowed`` (all rows when ``None``)."""
    keep = np.ones(len(frame), dtype=bool)
    for name in columns if allowed is not None else ():
        if name not in allowed:
            keep &= ~frame[name].str.strip().isin(("1", "1.0", "-1", "-1.0")).to_numpy()
    return keep


def _check_findings(findings: Sequence[str] | None, known: Sequence[str], layout: str) -> None:
    unknown = sorted(set(findings or ()) - set(known))
    if unknown:
        raise UserError(f"--findings {unknown} are not {layout} labels; valid: {', '.join(known)}")


def _balanced_order(keys: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """A permutation taking rows from each key's group in turn, so every prefix holds the groups about equally."""
    groups = [rng.permutation(np.flatnonzero(np.asarray(keys) == key)) for key in sorted(set(keys))]
    depth = max(len(g) for g in groups)
    return np.array([g[i] for i in range(depth) for g in groups if i < len(g)], dtype=np.intp)


def _chexpert(n: int, seed: int, findings: Sequence[str] | None, balance: bool) -> tuple[list[PhantomRecord], dict[str, str]]:
    _check_findings(findings, CHEXPERT_OBSERVATIONS[1:], "CheXpert")
    frontal, patient = _chexpert_frontal()
    keep = _only_findings(frontal, CHEXPERT_OBSERVATIONS[1:], findings)
    frontal, patient = frontal[keep], patient[keep]
    if n > len(frontal):
        raise UserError(f"--n {n} is larger than the {len(frontal)} frontal CheXpert rows available; use a smaller --n")
    rng = np.random.default_rng(stable_seed("chexpert", seed))
    if balance:
        keys = ["|".join(sorted(chexpert_findings(row))) for row in frontal[list(CHEXPERT_OBSERVATIONS[1:])].to_dict("records")]
        order = _balanced_order(keys, rng)
    else:
        order = rng.permutation(len(frontal))
    n_valid = max(1, round(0.1 * n)) if n >= 2 else 0
    train_pos, rest = order[: n - n_valid], order[n - n_valid :]
    other = rest[~patient.iloc[rest].isin(set(patient.iloc[train_pos])).to_numpy()]
    train = frontal.iloc[np.sort(train_pos)]
    valid = frontal.iloc[np.sort(other[:n_valid])].copy()
    valid["Path"] = valid["Path"].str.replace(f"{CHEXPERT_ROOT}/train/", f"{CHEXPERT_ROOT}/valid/", regex=False)
    items = []
    for split, rows in (("train", train), ("valid", valid)):
        for row in rows.to_dict("records"):
            patient_id = row["Path"].split("/")[2]
            anatomy, image = stable_seed(seed, "chexpert", patient_id), stable_seed(seed, row["Path"])
            items.append(PhantomRecord(row["Path"], split, anatomy, image, _sex(row["Sex"]), False, chexpert_findings(row)))
    texts = {f"{CHEXPERT_ROOT}/{split}.csv": csv_text(rows) for split, rows in (("train", train), ("valid", valid))}
    return items, texts


# ---------------------------------------------------------------- nih
def _nih(n: int, seed: int, findings: Sequence[str] | None, balance: bool) -> tuple[list[PhantomRecord], dict[str, str]]:
    if balance:
        raise UserError("--balance is available for the chexpert layout only")
    _check_findings(findings, sorted(NIH_TO_FINDING), "NIH")
    table = read_shipped_labels("Data_Entry_2017_v2020.csv.gz")
    if findings is not None:
        allowed = set(findings) | {"No Finding"}
        table = table[table["Finding Labels"].map(lambda v: set(v.split("|")) <= allowed)]
    rows = _sample_rows(table, n, np.random.default_rng(stable_seed("nih", seed)), "NIH")
    items, lists = [], {"train_val_list.txt": [], "test_list.txt": []}
    for row in rows.to_dict("records"):
        test = stable_seed("nih-split", row["Patient ID"]) % 100 < NIH_TEST_PERCENT
        lists["test_list.txt" if test else "train_val_list.txt"].append(row["Image Index"])
        anatomy, image = stable_seed(seed, "nih", row["Patient ID"]), stable_seed(seed, row["Image Index"])
        items.append(PhantomRecord(
            f"images/{row['Image Index']}", "test" if test else "train_val", anatomy, image,
            _sex(row["Patient Gender"]), False, nih_findings(row["Finding Labels"]),
        ))
    texts = {name: "".join(f"{index}\n" for index in sorted(names)) for name, names in lists.items()}
    texts[NIH_CSV] = csv_text(rows)
    return items, texts


# ---------------------------------------------------------------- pneumonia (Kermany)
_KERMANY_SPLITS = (("val", 0.04), ("test", 0.16))  # the rest is train


class _Patient(NamedTuple):
    cls: str  # NORMAL or PNEUMONIA (the class folder)
    names: list[str]  # file names of the patient's images
    findings: dict[str, float]


def _kermany_patients(n: int, rng: np.random.Generator) -> list[_Patient]:
    """Synthetic patients holding ``n`` images in total, named like the real files."""
    patients: list[_Patient] = []
    counters = {"IM": 0, "NORMAL2-IM": 0, "person": 0, "image": 0}
    total = 0
    while total < n:
        count = min(n - total, 1 + int(rng.random() < 0.35) + int(rng.random() < 0.1))
        if rng.random() < 0.27:
            prefix = "NORMAL2-IM" if rng.random() < 0.4 else "IM"
            counters[prefix] += int(rng.integers(1, 4))
            patients.append(_Patient("NORMAL", [f"{prefix}-{counters[prefix]:04d}-{k + 1:04d}.jpeg" for k in range(count)], {}))
        else:
            kind = "bacteria" if rng.random() < 0.65 else "virus"  # bacterial: lobar; viral: interstitial
            counters["person"] += int(rng.integers(1, 4))
            names = []
            for _ in range(count):
                counters["image"] += int(rng.integers(1, 5))
                names.append(f"person{counters['person']}_{kind}_{counters['image']}.jpeg")
            findings = {"Pneumonia": 1.0, "Consolidation": 1.0} if kind == "bacteria" else {"Pneumonia": 0.7, "Infiltration": 1.0}
            patients.append(_Patient("PNEUMONIA", names, findings))
        total += count
    return patients


def _kermany_split(patients: list[_Patient], rng: np.random.Generator) -> list[str]:
    """Patient-disjoint split per class: ~4 % val, ~16 % test, at least one patient each (classes of >= 3 patients)."""
    splits = ["train"] * len(patients)
    for cls in ("NORMAL", "PNEUMONIA"):
        members = [i for i, p in enumerate(patients) if p.cls == cls]
        if len(members) < 3:
            continue
        images = sum(len(patients[i].names) for i in members)
        order = [members[i] for i in rng.permutation(len(members))]
        for split, fraction in _KERMANY_SPLITS:
            taken = 0
            while len(order) > 1 and (taken == 0 or taken < fraction * images):
                index = order.pop()
                splits[index] = split
                taken += len(patients[index].names)
    return splits


def _pneumonia(n: int, seed: int, findings: Sequence[str] | None, balance: bool) -> tuple[list[PhantomRecord], dict[str, str]]:
    if balance:
        raise UserError("--balance is available for the chexpert layout only")
    if findings is not None:
        raise UserError("--findings does not apply to the pneumonia layout (its classes are NORMAL and PNEUMONIA)")
    rng = np.random.default_rng(stable_seed("pneumonia", seed))
    patients = _kermany_patients(n, rng)
    items = []
    for patient, split in zip(patients, _kermany_split(patients, rng)):
        anatomy = stable_seed(seed, "pneumonia", patient.names[0])
        for name in patient.names:
            items.append(PhantomRecord(f"{split}/{patient.cls}/{name}", split, anatomy, stable_seed(seed, name), "", True, dict(patient.findings)))
    return items, {}


LAYOUT_WRITERS: dict[str, Callable[[int, int, Sequence[str] | None, bool], tuple[list[PhantomRecord], dict[str, str]]]] = {
    "chexpert": _chexpert,
    "nih": _nih,
    "pneumonia": _pneumonia,
}
#: the on-disk layouts :func:`make_phantoms` writes
LAYOUTS: tuple[str, ...] = tuple(LAYOUT_WRITERS)
