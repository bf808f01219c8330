"""The data-use guard: no real corpus images and no memorised copies leave through ``publish``.

CheXpert, MIMIC-CXR and most chest X-ray corpora forbid redistributing their images, and a
synthetic image that copies a training image leaks that patient (Carlini et al., "Extracting
training data from diffusion models", USENIX Security 2023). So, before a dataset is exported:

* **real images**: every row must carry the generator's provenance columns
  (:data:`PROVENANCE_COLUMNS`) and every image must be one the folder's own generation run made
  (:class:`GeneratedImages`: the generator's exact ``synthetic`` PNG chunk and a pixel sha256 in its
  manifest). Anything else counts as a real image and is refused unless the user passes
  ``--i-have-redistribution-rights``.
* **near-duplicates**: a memorisation report is read and synthetic images whose highest
  similarity to a training image exceeds its threshold are refused, unless
  ``--allow-near-duplicates`` (then a loud warning, and the card says so).

The memorisation report is a report written by ``cxr-diffusion evaluate --metrics memorisation``
(:func:`hf_cxr_diffusion.artefacts.read_report`): its ``memorisation`` entry holds the threshold
and one ``max_similarity`` per synthetic image, in dataset order.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from hf_cxr_diffusion.artefacts import (
    MANIFEST_FILE,
    PNG_SYNTHETIC_KEY,
    PNG_SYNTHETIC_VALUE,
    MetricResult,
    read_manifest,
    read_report,
)
from hf_cxr_diffusion.errors import UserError
from hf_cxr_diffusion.hashing import sha256_pixels

logger = logging.getLogger(__name__)

#: columns every synthetic row carries (written by the generation stage)
PROVENANCE_COLUMNS: tuple[str, ...] = ("seed", "scheduler", "steps", "guidance", "base_model")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".dcm"})


@dataclass(frozen=True)
class GeneratedImages:
    """What a folder's own generation run made: the pixel sha256 of every image in its manifest.

    An image counts as synthetic only when its ``synthetic`` PNG chunk is exactly the generator's value
    (:data:`~hf_cxr_diffusion.artefacts.PNG_SYNTHETIC_VALUE`) *and* its decoded pixels hash to an entry of
    :data:`~hf_cxr_diffusion.artefacts.MANIFEST_FILE` checked against the folder's own generation config:
    a chunk copied onto a real image, or a folder with another run's manifest, proves nothing.
    """

    pixel_sha256: frozenset[str]
    #: why nothing can be verified (no or foreign manifest), else None
    problem: str | None = None

    @classmethod
    def of_folder(cls, folder: Path) -> GeneratedImages:
        try:
            return cls(frozenset(read_manifest(folder).images))
        except UserError as err:
            return cls(frozenset(), str(err))

    def verifies(self, image: str | Path | bytes) -> bool:
        """Whether the image file (path or encoded bytes) is one this run generated."""
        try:
            with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as img:
                img.load()
                marked = dict(getattr(img, "text", {}) or {}).get(PNG_SYNTHETIC_KEY) == PNG_SYNTHETIC_VALUE
                return marked and sha256_pixels(img) in self.pixel_sha256
        except (OSError, SyntaxError, ValueError):
            return False


@dataclass
class RealImageScan:
    """Rows / files that do not look synthetic, with the first few named."""

    checked: int = 0
    real: int = 0
    examples: list[str] = field(default_factory=list)
    #: why no image could be verified (see :attr:`GeneratedImages.problem`)
    problem: str | None = None

    def add(self, name: str, synthetic: bool) -> None:
        self.checked += 1
        if not synthetic:
            self.real += 1
            if len(self.examples) < 5:
                self.examples.append(name)


def has_provenance(row: Mapping[str, Any]) -> bool:
    """Whether every :data:`PROVENANCE_COLUMNS` entry of ``row`` is set."""
    return all(row.get(col) is not None for col in PROVENANCE_COLUMNS)


def _scan_parquet(path: Path, rel: str, scan: RealImageScan, generated: GeneratedImages) -> None:
    """Rows need provenance; every encoded image (a struct column with ``bytes``) needs the mark."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(path)
    image_columns = [
        f.name for f in handle.schema_arrow if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0
    ]
    row = 0
    for batch in handle.iter_batches(batch_size=256):
        for record in batch.to_pylist():
            images = [record[c]["bytes"] for c in image_columns if record.get(c) and record[c].get("bytes")]
            scan.add(f"{rel} row {row}", has_provenance(record) and all(generated.verifies(b) for b in images))
            row += 1


def _scan_metadata(path: Path, rel: str, scan: RealImageScan) -> None:
    import pandas as pd

    rows = pd.read_json(path, lines=True) if path.suffix == ".jsonl" else pd.read_csv(path)
    for i, record in enumerate(rows.astype(object).where(rows.notna(), None).to_dict("records")):
        scan.add(f"{rel} line {i + 1}", has_provenance(record))


def scan_files(root: Path, files: Iterable[str]) -> RealImageScan:
    """Check every file that will be uploaded: parquet rows, imagefolder metadata rows, image files, each
    image against the manifest of ``root``'s own generation run (:class:`GeneratedImages`).

    The check reads the files themselves, not what ``datasets`` makes of them, so data that a card's
    ``configs:`` hides or that no loader reads is checked all the same.
    """
    generated = GeneratedImages.of_folder(root)
    scan = RealImageScan(problem=generated.problem)
    for rel in files:
        path = root / rel
        if path.suffix == ".parquet":
            _scan_parquet(path, rel, scan, generated)
        elif path.name in ("metadata.jsonl", "metadata.csv"):
            _scan_metadata(path, rel, scan)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            scan.add(rel, generated.verifies(path))
        else:  # archives, arrow, numpy...: nothing proves their content synthetic
            scan.add(f"{rel} (a format the guard cannot check)", False)
    return scan


def refuse_real_images(scan: RealImageScan, src: Path, *, rights: bool) -> None:
    """Raise unless no real image was found or the user holds redistribution rights."""
    if not scan.real:
        return
    what = (
        f"{scan.real} of {scan.checked} image(s)/row(s) in {src} are not verified synthetic (provenance columns "
        f"{', '.join(PROVENANCE_COLUMNS)}, the PNG chunk {PNG_SYNTHETIC_KEY}={PNG_SYNTHETIC_VALUE!r} and pixels listed in "
        f"{MANIFEST_FILE} of this folder's generation run), e.g. {', '.join(scan.examples)}"
        + (f" [{scan.problem}]" if scan.problem else "")
    )
    if not rights:
        raise UserError(
            f"{what}: they may be real corpus images, which most chest X-ray licences forbid redistributing. "
            "Remove them, or pass --i-have-redistribution-rights if you are allowed to share them"
        )
    logger.warning("%s; publishing them because --i-have-redistribution-rights was given", what)


@dataclass(frozen=True)
class MemorisationCheck:
    """The outcome of the near-duplicate check, as shown on the dataset card."""

    source: str | None
    threshold: float | None = None
    checked: int = 0
    above: tuple[tuple[str, float], ...] = ()
    allowed: bool = False
    random_weights_report: str | None = None

    def summary(self) -> str:
        if self.random_weights_report is not None:
            return (
                f"**Not checked**: the memorisation report `{self.random_weights_report}` used random feature "
                "weights, which cannot tell copies from new images. Re-run `cxr-diffusion evaluate` with the "
                "real TorchXRayVision weights before relying on these images being free of training-image copies."
            )
        if self.source is None:
            return (
                "**Not checked**: no memorisation report was found. Run `cxr-diffusion evaluate` with the "
                "memorisation metric before relying on these images being free of training-image copies."
            )
        text = (
            f"Checked {self.checked} image(s) against the generator's training images (report `{self.source}`): "
            f"{len(self.above)} above the similarity threshold {self.threshold}."
        )
        if self.above:
            listed = ", ".join(f"`{name}` ({sim:.4f})" for name, sim in self.above[:20])
            text += f" **Published anyway with --allow-near-duplicates**: {listed}."
        return text


def _similarities(entry: MetricResult, origin: Path) -> tuple[float, list[tuple[str, float]]]:
    details = entry.details
    try:
        sims = [float(v) for v in details["max_similarity"]]
        threshold = float(details["threshold"])
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"memorisation report {origin}: its memorisation entry lacks threshold/max_similarity ({err}); "
                        "re-run `cxr-diffusion evaluate --metrics memorisation`") from err
    names = [str(n) for n in details.get("file_names") or [f"image #{i}" for i in range(len(sims))]]
    if len(names) != len(sims):
        raise UserError(f"memorisation report {origin}: {len(names)} file_names but {len(sims)} max_similarity values")
    return threshold, list(zip(names, sims, strict=True))


def check_memorisation(report: Path | None, *, n_images: int, allow: bool) -> MemorisationCheck:
    """Refuse (or, with ``allow``, warn loudly) when images exceed the report's similarity threshold."""
    if report is None:
        logger.warning("no memorisation report: the dataset is published WITHOUT a near-duplicate check")
        return MemorisationCheck(source=None)
    entry = read_report(report).metrics.get("memorisation")
    if entry is None:
        raise UserError(f"report {report} has no memorisation result; run `cxr-diffusion evaluate --metrics memorisation`")
    if entry.random_weights:
        logger.warning(
            "memorisation report %s was computed with RANDOM feature weights, which prove nothing either way: "
            "the dataset is published WITHOUT a near-duplicate check", report.name
        )
        return MemorisationCheck(source=None, random_weights_report=report.name)
    threshold, sims = _similarities(entry, report)
    if len(sims) != n_images:
        logger.warning("memorisation report %s covers %d images but the dataset has %d", report, len(sims), n_images)
    above = tuple(sorted(((n, s) for n, s in sims if s > threshold), key=lambda p: -p[1]))
    if above:
        listed = ", ".join(f"{name} ({sim:.4f})" for name, sim in above[:5])
        message = (
            f"{len(above)} synthetic image(s) exceed the memorisation threshold {threshold} of {report}: "
            f"{listed} — they may copy training patients"
        )
        if not allow:
            raise UserError(f"{message}. Remove them and regenerate, or pass --allow-near-duplicates to publish anyway")
        logger.warning("!!! %s. PUBLISHING ANYWAY because --allow-near-duplicates was given !!!", message)
    return MemorisationCheck(source=report.name, threshold=threshold, checked=len(sims), above=above, allowed=allow)
