"""Procedural chest X-ray PHANTOM corpora, written in the real on-disk layouts of public corpora.

PHANTOMS ARE FOR EXERCISING THE SOFTWARE, NOT A MEDICAL DATASET. The images are drawn by
:mod:`hf_cxr_diffusion.phantoms.draw` (no real radiograph is used or reproduced); their
findings follow their label rows so that a small classifier can learn them and a diffusion
model has real structure to fit. The label rows themselves are REAL rows of the label files
that ``torchxrayvision`` ships, so label frequencies and co-occurrences are realistic:

``chexpert``
    Frontal rows sampled from ``chexpert_train.csv.gz`` (Irvin et al., CheXpert, AAAI 2019),
    written as ``CheXpert-v1.0-small/train.csv`` with the real columns and values, images at
    the rows' own ``Path`` (``CheXpert-v1.0-small/train/patientNNNNN/studyM/viewK_frontal.jpg``).
    Lateral rows are never sampled (the phantom draws frontal views only). About 10 % of the
    images form ``valid.csv``: rows of OTHER patients from the same file, their ``Path``
    re-rooted from ``train/`` to ``valid/`` (torchxrayvision ships no validation labels).
    Uncertain labels (-1.0) are drawn faintly (severity 0.5), blank and 0.0 are not drawn.
``nih``
    Rows sampled from ``Data_Entry_2017_v2020.csv.gz`` (Wang et al., ChestX-ray8, CVPR 2017),
    written as ``Data_Entry_2017_v2020.csv``, PNG images at ``images/<Image Index>``, and
    ``train_val_list.txt`` / ``test_list.txt``. torchxrayvision does not ship the official
    lists, so the split is patient-disjoint by a stable hash of ``Patient ID`` (about 20 %
    test, independent of the seed and of ``n``).
``pneumonia``
    The Kermany et al. (Cell 2018) paediatric set as distributed on Kaggle
    (chest-xray-pneumonia): ``{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``, about 1:3
    normal:pneumonia, bacterial:viral about 2:1, file names in the real patterns
    (``IM-0001-0001.jpeg``, ``NORMAL2-IM-0001-0001.jpeg``, ``person12_bacteria_45.jpeg``). There
    is no label file to sample: patients are synthetic and the splits are patient-disjoint.

Every corpus also gets ``PHANTOM_README.txt`` (what this is) and ``phantom_manifest.csv`` (per
image: split, drawing seeds, sex, the findings drawn with their severity);
:func:`~hf_cxr_diffusion.phantoms.manifest.read_manifest` turns it into
:class:`~hf_cxr_diffusion.phantoms.manifest.PhantomRecord` objects that redraw an image or give its
regions with :func:`~hf_cxr_diffusion.phantoms.draw.phantom_geometry`. The same seed gives byte-identical files.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.io import atomic_path, ensure_output_dir
from hf_cxr_diffusion.phantoms.draw import MIN_RESOLUTION
from hf_cxr_diffusion.phantoms.layouts import LAYOUT_WRITERS, LAYOUTS
from hf_cxr_diffusion.phantoms.manifest import MANIFEST_NAME, PhantomRecord, manifest_text

logger = logging.getLogger(__name__)

README_NAME = "PHANTOM_README.txt"


def is_phantom_corpus(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a corpus written by :func:`make_phantoms` (it holds :data:`README_NAME`)."""
    return (Path(folder) / README_NAME).is_file()


def _readme(layout: str, n: int, seed: int, resolution: int, items: list[PhantomRecord], findings: Sequence[str] | None,
            balance: bool) -> str:
    counts = pd.Series([item.split for item in items]).value_counts().sort_index()
    source = {
        "chexpert": "Label rows are REAL rows of CheXpert's train.csv as shipped by torchxrayvision\n"
        "(chexpert_train.csv.gz); valid.csv holds real rows of other patients re-rooted to valid/.",
        "nih": "Label rows are REAL rows of NIH ChestX-ray14's Data_Entry_2017_v2020.csv as shipped by\n"
        "torchxrayvision; train_val_list.txt/test_list.txt split patients by a stable hash of Patient ID.",
        "pneumonia": "Patients, file names and labels are synthetic, in the layout of Kermany et al.'s\n"
        "chest-xray-pneumonia set; splits are patient-disjoint.",
    }[layout]
    return (
        "PROCEDURALLY GENERATED CHEST X-RAY PHANTOMS\n\n"
        "These images are procedurally drawn phantoms for exercising the software (hf-cxr-diffusion).\n"
        "They are NOT a medical dataset, contain no patient image and must not be used to train or\n"
        "evaluate anything meant for clinical use.\n\n"
        f"{source}\n"
        "Findings are drawn from the labels (uncertain CheXpert labels faintly); see phantom_manifest.csv.\n\n"
        f"layout: {layout}\nn: {n}\nseed: {seed}\nresolution: {resolution}\n"
        + (f"findings: only rows whose labels lie in {', '.join(findings)}\n" if findings is not None else "")
        + ("balance: finding combinations drawn about equally often\n" if balance else "")
        + "".join(f"images in {split}: {count}\n" for split, count in counts.items())
    )


def _save_image(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(image, mode="L")
    if path.suffix.lower() == ".png":
        picture.save(path, format="PNG")
    else:
        picture.save(path, format="JPEG", quality=95)


def make_phantoms(
    output_dir: str | os.PathLike, layout: str = "chexpert", n: int = 200, seed: int = 0, resolution: int = 256,
    findings: Sequence[str] | None = None, balance: bool = False,
) -> Path:
    """Write ``n`` phantom images (all splits together) in ``layout``'s real on-disk layout under ``output_dir``.

    ``findings`` (chexpert, nih) keeps only label rows whose positive and uncertain labels all lie in
    that list (rows with none, i.e. "No Finding", included), e.g. a demo corpus of No Finding,
    Cardiomegaly and Pleural Effusion only. ``balance`` (chexpert) draws the rows so that every
    combination of findings present is about equally frequent (instead of CheXpert's own rates).
    Returns ``output_dir``. Each top-level entry (e.g. ``CheXpert-v1.0-small/``) is built in a
    hidden staging folder and moved into place when complete, replacing an older one.
    """
    if layout not in LAYOUT_WRITERS:
        raise UserError(f"unknown phantom layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    if n < 1:
        raise UserError(f"--n {n} must be at least 1")
    if resolution < MIN_RESOLUTION:
        raise UserError(f"--resolution {resolution} is too small for a phantom; use at least {MIN_RESOLUTION}")
    out = ensure_output_dir(output_dir)
    items, texts = LAYOUT_WRITERS[layout](n, seed, findings, balance)
    texts[README_NAME] = _readme(layout, n, seed, resolution, items, findings, balance)
    texts[MANIFEST_NAME] = manifest_text(items)
    staging = Path(tempfile.mkdtemp(prefix=".phantoms-", dir=out))
    try:
        for item in tqdm(items, desc=f"phantoms ({layout})", unit="img"):
            _save_image(item.draw(resolution), staging / item.path)
        for name, text in texts.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(text, encoding="utf-8")
        for entry in sorted(staging.iterdir()):
            with atomic_path(out / entry.name) as target:
                os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %d %s phantom images (seed %d, %d px) to %s", len(items), layout, seed, resolution, out)
    return out
