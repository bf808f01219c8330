"""What every corpus reader returns: a :class:`CorpusTable` (one row per image) and its :class:`Record` view.

A reader knows one corpus's real on-disk layout and official metadata and nothing else: no label
policy, no prompts, no splitting by hash. Columns of ``CorpusTable.frame`` (all strings except
``age``, a nullable integer, and ``origin_row``):

``path`` (relative to ``root``, POSIX), ``patient_id``, ``study_id``, ``view`` ("frontal" / "lateral" /
""), ``projection`` (AP, PA, LL, ...), ``sex`` ("Male" / "Female" / ""), ``age``, ``report`` (free text),
``split`` (official split, "trainval" or ""), ``label`` (class name of folder corpora),
``origin_file`` / ``origin_row`` (where the row came from, for error messages).
"""

from __future__ import annotations

import abc
import os
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from hf_cxr_diffusion.data.labels import CHEXPERT_LABELS, parse_label_frame
from hf_cxr_diffusion.errors import UserError

FRAME_COLUMNS: tuple[str, ...] = (
    "path", "patient_id", "study_id", "view", "projection", "sex", "age", "report", "split", "label",
    "origin_file", "origin_row",
)
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
FRONTAL = frozenset({"PA", "AP", "AP AXIAL", "PA LLD", "AP LLD", "AP RLD", "PA RLD", "FRONTAL", "POSTEROANTERIOR", "ANTEROPOSTERIOR"})
LATERAL = frozenset({"LL", "RL", "LATERAL", "LAT", "LARGE LATERAL", "LAO", "RAO", "LPO", "XTABLE LATERAL", "SWIMMERS"})
_DRIVE = re.compile(r"^[A-Za-z]:/")


@dataclass(frozen=True)
class Record:
    """One image of a corpus, before any label policy or prompt."""

    path: str
    patient_id: str
    study_id: str
    view: str
    sex: str
    age: int | None
    labels: dict[str, float] = field(default_factory=dict)
    report: str = ""
    split: str = ""
    label: str = ""


@dataclass
class CorpusTable:
    """All images of a corpus as one frame plus raw label values ``(rows, labels)`` (1 / 0 / -1 / NaN)."""

    corpus: str
    root: Path
    frame: pd.DataFrame
    values: np.ndarray
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        missing = [c for c in FRAME_COLUMNS if c not in self.frame.columns]
        for col in missing:
            self.frame[col] = None if col == "age" else ("" if col != "origin_row" else 0)
        self.frame = self.frame.loc[:, list(FRAME_COLUMNS)].reset_index(drop=True)
        for col in FRAME_COLUMNS:
            if col == "age":
                self.frame[col] = pd.to_numeric(self.frame[col], errors="coerce").round().astype("Int64")
            elif col != "origin_row":
                self.frame[col] = self.frame[col].fillna("").astype(str)
        self.values = np.asarray(self.values, dtype=np.float64).reshape(len(self.frame), len(self.label_names))

    def __len__(self) -> int:
        return len(self.frame)

    def subset(self, rows: np.ndarray | pd.Series) -> CorpusTable:
        """Rows selected by a boolean mask or integer positions."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return CorpusTable(self.corpus, self.root, self.frame.iloc[rows].copy(), self.values[rows], self.label_names)

    def records(self) -> Iterator[Record]:
        """The rows as :class:`Record` objects (a streaming-friendly view)."""
        cols = [self.frame[c].tolist() for c in ("path", "patient_id", "study_id", "view", "sex", "age", "report", "split", "label")]
        for i, (path, pid, sid, view, sex, age, report, split, label) in enumerate(zip(*cols)):
            yield Record(path, pid, sid, view, sex, None if age is pd.NA else int(age),
                         dict(zip(self.label_names, self.values[i].tolist())), report, split, label)


class Corpus(abc.ABC):
    """A corpus reader. Subclasses set the class attributes and implement :meth:`read`."""

    name: ClassVar[str]
    label_names: ClassVar[tuple[str, ...]] = ()
    default_template: ClassVar[str] = "findings"
    #: labels that may be positive together with "No Finding" (e.g. CheXpert's "Support Devices")
    no_finding_exempt: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    homepage: ClassVar[str] = ""
    license_note: ClassVar[str] = ""
    citation: ClassVar[str] = ""

    def default_template_for(self, table: CorpusTable) -> str:
        """The template used when none is given (folder corpora decide from their contents)."""
        return self.default_template

    @abc.abstractmethod
    def read(self, data_dir: Path, *, reports: bool = True) -> CorpusTable:
        """Read the corpus under ``data_dir``; ``reports=False`` may skip reading free-text reports."""

    def table(self, root: Path, frame: pd.DataFrame, values: np.ndarray | None = None,
              label_names: Sequence[str] | None = None) -> CorpusTable:
        names = tuple(self.label_names if label_names is None else label_names)
        if values is None:
            values = np.full((len(frame), len(names)), np.nan)
        return CorpusTable(self.name, Path(root), frame, values, names)


class CheXpertLabelledCorpus(Corpus):
    """A corpus labelled with the CheXpert labeller's 14 observations (Irvin et al. 2019): CheXpert, MIMIC-CXR."""

    label_names = CHEXPERT_LABELS
    no_finding_exempt = ("Support Devices",)

    def parse_labels(self, frame: pd.DataFrame, file: str | Path) -> np.ndarray:
        """The observation columns of a labeller CSV as 1 / 0 / -1 / NaN (errors name ``file``)."""
        return parse_label_frame(frame, self.label_names, file=str(file))


def require_dir(data_dir: str | Path, what: str) -> Path:
    path = Path(data_dir)
    if not path.is_dir():
        raise UserError(f"--data-dir {path} is not a folder; point it at the {what}")
    return path


def find_one(data_dir: Path, names: Sequence[str], what: str, *, depth: int = 2) -> Path:
    """The first of ``names`` found in ``data_dir`` or up to ``depth`` levels below it (sorted, so stable)."""
    for level in range(depth + 1):
        for name in names:
            hits = sorted(data_dir.glob("/".join(["*"] * level + [name])))
            if hits:
                return hits[0]
    raise UserError(f"no {what} ({' or '.join(names)}) found in {data_dir}; check --data-dir")


def read_csv(path: Path, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"cannot parse {path}: {err}") from err


def normalise_sex(values: pd.Series) -> pd.Series:
    """M / F / Male / female / Unknown -> "Male" / "Female" / ""."""
    first = values.fillna("").astype(str).str.strip().str[:1].str.upper()
    return first.map({"M": "Male", "F": "Female"}).fillna("")


def view_of_projection(values: pd.Series) -> pd.Series:
    """Projection codes (PA, AP, LL, LATERAL, ...) -> "frontal" / "lateral" / ""."""
    up = values.fillna("").astype(str).str.strip().str.upper()
    return pd.Series(np.select([up.isin(FRONTAL), up.isin(LATERAL)], ["frontal", "lateral"], ""), index=values.index)


def origin_of(row: pd.Series) -> str:
    """Where a frame row came from, for error messages: ``file line N`` (or just the file)."""
    line = int(row["origin_row"] or 0)
    return f"{row['origin_file']} line {line}" if line > 0 else str(row["origin_file"])


def _escapes(path: str) -> bool:
    return posixpath.isabs(path) or _DRIVE.match(path) is not None or path == ".." or path.startswith("../")


def check_paths(frame: pd.DataFrame, root: Path, *, resolve: bool = False) -> pd.Series:
    """The one containment check of image paths from user metadata: every path stays inside ``root``.

    Returns the normalised POSIX paths relative to ``root``. An absolute path under ``root`` is made
    relative, then normalised and checked again (``<root>/../x.png`` escapes); ``..`` segments that climb
    out, other absolute paths and drive letters are refused. With ``resolve`` (the files will be read),
    each path is also resolved through symlinks and must land inside the resolved ``root``. A refused
    path is a :class:`UserError` naming the metadata file and line.
    """
    paths = frame["path"].astype(str).str.replace("\\", "/", regex=False)
    suspicious = paths.str.startswith("/") | paths.str.contains(r"(?:^|/)\.{1,2}(?:/|$)|//") | paths.str.match(_DRIVE.pattern)
    fixed = paths.copy()
    prefixes = sorted({Path(root).absolute().as_posix().rstrip("/") + "/", Path(root).resolve().as_posix().rstrip("/") + "/"},
                      key=len, reverse=True)
    for i in np.flatnonzero(suspicious.to_numpy()):
        raw = paths.iat[i]
        rel = next((raw[len(p):] for p in prefixes if raw.startswith(p)), raw)
        norm = posixpath.normpath(rel) if rel else rel
        if not norm or norm == "." or _escapes(norm):
            raise UserError(f"{origin_of(frame.iloc[i])}: image path {raw!r} is absolute or escapes the data folder {root}; "
                            "image paths must be relative to it")
        fixed.iat[i] = norm
    if resolve:
        real_root = os.path.realpath(root)
        for i, rel in enumerate(fixed):
            real = os.path.realpath(os.path.join(real_root, rel))
            if not real.startswith(real_root + os.sep):
                raise UserError(f"{origin_of(frame.iloc[i])}: image path {rel!r} resolves through a symlink to {real}, "
                                f"outside the data folder {root}; copy the image into the data folder (or point "
                                "--data-dir at a folder that holds it)")
    return fixed


def extract(values: pd.Series, pattern: str) -> pd.DataFrame:
    """Named regex groups of every string as columns (vectorised in Arrow); non-matching rows are NA."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(values.astype(object).where(values.notna(), None).tolist(), type=pa.string())
    found = pc.extract_regex(arr, pattern)
    valid = found.is_valid().to_numpy(zero_copy_only=False)
    out = {}
    for i, name in enumerate(found.type.names if hasattr(found.type, "names") else [f.name for f in found.type]):
        col = pd.Series(found.field(i).to_numpy(zero_copy_only=False), index=values.index, dtype=object)
        out[name] = col.where(valid, None)
    return pd.DataFrame(out, index=values.index)


def age_from_text(values: pd.Series) -> pd.Series:
    """"032Y", "58", 68.0 -> integer years (nullable)."""
    digits = values.astype(str).str.extract(r"(\d+(?:\.\d+)?)", expand=False)
    return pd.to_numeric(digits, errors="coerce")
