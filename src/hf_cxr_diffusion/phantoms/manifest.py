"""The manifest of a phantom corpus (``phantom_manifest.csv``): one :class:`PhantomRecord` per image.

This module owns the file: :func:`manifest_text` writes it for :func:`~hf_cxr_diffusion.phantoms.corpus.make_phantoms`
and :func:`read_manifest` reads it back, so a record redraws its image or gives its regions with
:func:`~hf_cxr_diffusion.phantoms.draw.phantom_geometry`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.phantoms.draw import PhantomParams, draw_phantom, sample_params

MANIFEST_NAME = "phantom_manifest.csv"


@dataclass(frozen=True)
class PhantomRecord:
    """One image of a phantom corpus: where it is and everything needed to redraw it (a manifest row)."""

    path: str  # relative to the corpus folder
    split: str
    anatomy_seed: int
    image_seed: int
    sex: str  # "male", "female" or "" (drawn at random from the anatomy seed)
    pediatric: bool
    findings: dict[str, float]

    def params(self) -> PhantomParams:
        """The drawing parameters; ``phantom_geometry(record.params(), resolution, record.findings)`` gives its regions."""
        return sample_params(self.anatomy_seed, self.image_seed, sex=self.sex or None, pediatric=self.pediatric)

    def draw(self, resolution: int) -> np.ndarray:
        return draw_phantom(self.params(), self.findings, resolution)


def read_manifest(corpus_dir: str | os.PathLike) -> list[PhantomRecord]:
    """The records of a corpus written by :func:`make_phantoms` (its ``phantom_manifest.csv``)."""
    path = Path(corpus_dir) / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{path} not found; is {corpus_dir} a folder written by make-phantoms?")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return [
        PhantomRecord(
            path=row["path"],
            split=row["split"],
            anatomy_seed=int(row["anatomy_seed"]),
            image_seed=int(row["image_seed"]),
            sex=row["sex"],
            pediatric=row["pediatric"] == "True",
            findings={k: float(v) for k, v in (part.split(":") for part in row["findings"].split("|") if part)},
        )
        for row in frame.to_dict("records")
    ]


def csv_text(frame: pd.DataFrame) -> str:
    """A table as the CSV text every phantom label and manifest file uses (no index, ``\\n`` line ends)."""
    return frame.to_csv(index=False, lineterminator="\n")


def manifest_text(items: list[PhantomRecord]) -> str:
    """The manifest file's text for ``items`` (what :func:`read_manifest` reads back)."""
    columns = ["path", "split", "anatomy_seed", "image_seed", "sex", "pediatric", "findings"]
    rows = [
        [item.path, item.split, item.anatomy_seed, item.image_seed, item.sex, item.pediatric,
         "|".join(f"{name}:{severity:g}" for name, severity in sorted(item.findings.items()))]
        for item in items
    ]
    return csv_text(pd.DataFrame(rows, columns=columns))
