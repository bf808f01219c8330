"""``PrepareConfig``: every option of ``cxr-diffusion prepare`` in one dataclass (each field is also a flag).

Like :class:`hf_cxr_diffusion.training.config.TrainConfig`, each field carries ``metadata={"help": ...}``
and ``cli._common.add_config_flags`` builds one kebab-case flag per field from it, so the Python API
(``prepare(PrepareConfig(...))`` or ``prepare(corpus=..., data_dir=..., ...)``) and the CLI take the same
options with the same defaults and the same checks (:meth:`PrepareConfig.validate`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from hf_cxr_diffusion.artefacts import SKIPPED_FILE
from hf_cxr_diffusion.data.images import DEFAULT_MAX_PIXELS, DEFAULT_PNG_COMPRESS_LEVEL, PNG_FILTERS, DecodeSpec
from hf_cxr_diffusion.data.labels import UNCERTAIN_POLICIES
from hf_cxr_diffusion.data.splits import SPLIT_MODES, check_fractions
from hf_cxr_diffusion.errors import UserError

VIEWS: tuple[str, ...] = ("frontal", "lateral", "all")
ON_MISSING: tuple[str, ...] = ("error", "skip")
ON_DUPLICATE: tuple[str, ...] = ("error", "keep", "drop")
DEFAULT_SHARD_ROWS = 1000


def _f(default: Any, help: str, **meta: Any) -> Any:
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help, **meta})
    return dataclasses.field(default=default, metadata={"help": help, **meta})


@dataclasses.dataclass
class PrepareConfig:
    """How to turn a corpus on disk into a prepared dataset (see docs/design.md, "Prepared dataset folder")."""

    corpus: str = _f("", "chexpert, nih, iu_xray, montgomery, pneumonia, mimic or folder", required=True)
    data_dir: str | Path = _f("", "folder holding the corpus as downloaded", required=True)
    output_dir: str | Path = _f("", "folder to write the dataset to (outside --data-dir)")
    template: str | None = _f(None, "findings, report, demographic, class or a format string with {findings} {age} {sex} "
                                    "{view} {report} {label} (default: the corpus's)")
    uncertain: str = _f("ones", "uncertain (-1) labels: U-Ones, U-Zeros or U-Ignore", choices=UNCERTAIN_POLICIES)
    views: list[str] = _f(["frontal"], "comma-separated views to keep: frontal, lateral or all", sep=",")
    resolution: int = _f(512, "image side in pixels (short side resized, centre crop)")
    splits: str = _f("auto", "official split where the corpus has one (auto), required (official) or patient hash only",
                     choices=SPLIT_MODES)
    split_fractions: list[float] = _f([0.8, 0.1, 0.1], "train,validation,test fractions for hashed splits", sep=",")
    split_salt: str = _f("", "salt of the patient hash (a different salt gives another patient-disjoint split)")
    num_proc: int = _f(1, "image decoding processes")
    on_missing: str = _f("error", "missing or unreadable images and images without caption: stop (error) or skip them "
                                  f"and list them in {SKIPPED_FILE}", choices=ON_MISSING)
    on_duplicate: str = _f("error", "images listed more than once: stop (error), keep every row, or drop the repeats "
                                    f"(listed in {SKIPPED_FILE})", choices=ON_DUPLICATE)
    max_image_pixels: int = _f(DEFAULT_MAX_PIXELS, "larger images are treated as unreadable (decompression-bomb "
                                                    f"guard; --on-missing skip lists them in {SKIPPED_FILE})")
    jpeg_draft: bool = _f(True, "decode JPEGs at reduced size in the DCT domain (Pillow draft: /2, /4, /8, never below "
                                "--resolution) before the exact resize; --no-jpeg-draft decodes at full size (exact)")
    png_compress_level: int = _f(DEFAULT_PNG_COMPRESS_LEVEL, "zlib level 0-9 of the written PNGs: the same pixels at "
                                                              "every level; the default 1 encodes ~3x faster than "
                                                              "Pillow's default 6, files ~15 percent larger")
    png_filter: str = _f("adaptive", "PNG row filters: adaptive (Pillow's per-row choice, the default) "
                                     "or sub (one Sub filter per row, written with zlib directly): the same pixels; "
                                     "at level 1 ~1.7x the default's images/s per process, files about the same size",
                                     choices=PNG_FILTERS)
    limit: int | None = _f(None, "only the first N images (after the view filter)")
    images: bool = _f(True, "write the images (--no-images: prompts and labels only, no image files needed)")
    max_shard_rows: int = _f(DEFAULT_SHARD_ROWS, "rows per parquet shard")
    overwrite: bool = _f(False, "replace the prepared dataset already in --output-dir (nothing else is ever deleted)")

    @classmethod
    def from_options(cls, config: PrepareConfig | None = None, **options: Any) -> PrepareConfig:
        """``config`` (or the defaults) with ``options`` replacing fields; unknown names are a :class:`UserError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise UserError(f"unknown prepare option(s) {unknown}; valid options: {sorted(names)}")
        return dataclasses.replace(config or cls(), **options).validate()

    def validate(self) -> PrepareConfig:
        """Check every value that needs no file; raise :class:`UserError` naming the option."""
        for name in ("corpus", "data_dir"):
            if not str(getattr(self, name)):
                raise UserError(f"--{name.replace('_', '-')} is required")
        self.views = [v.strip() for v in self.views.split(",") if v.strip()] if isinstance(self.views, str) else list(self.views)
        unknown = [v for v in self.views if v not in VIEWS]
        if unknown or not self.views or ("all" in self.views and len(self.views) > 1):
            raise UserError(f"--views {','.join(self.views)!r}: use a comma-separated list of frontal, lateral, or all")
        if any(not isinstance(f, int | float) or not math.isfinite(f) for f in self.split_fractions):
            raise UserError(f"--split-fractions {self.split_fractions}: expected three finite numbers like 0.8,0.1,0.1")
        self.split_fractions = list(check_fractions(self.split_fractions))
        for name, allowed in (("uncertain", UNCERTAIN_POLICIES), ("splits", SPLIT_MODES), ("on_missing", ON_MISSING),
                              ("on_duplicate", ON_DUPLICATE), ("png_filter", PNG_FILTERS)):
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name, low in (("resolution", 8), ("num_proc", 1), ("max_shard_rows", 1), ("max_image_pixels", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"--{name.replace('_', '-')} must be a whole number >= {low}, got {value!r}")
        level = self.png_compress_level
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
            raise UserError(f"--png-compress-level must be a whole number from 0 to 9, got {level!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1):
            raise UserError(f"--limit must be a positive number of images, got {self.limit!r}")
        return self

    @property
    def decode_spec(self) -> DecodeSpec:
        """How the images are decoded."""
        return DecodeSpec(self.resolution, self.max_image_pixels, self.jpeg_draft, self.png_compress_level, self.png_filter)

    @property
    def view_filter(self) -> tuple[str, ...] | None:
        """The views to keep, or ``None`` for all."""
        return None if self.views == ["all"] else tuple(self.views)

    def recorded(self) -> dict[str, Any]:
        """The options written to ``prepare_info.json`` and the card (no local paths)."""
        keep = ("corpus", "uncertain", "splits", "split_fractions", "split_salt", "limit", "on_missing", "on_duplicate",
                "max_image_pixels", "jpeg_draft", "png_compress_level", "png_filter")
        return {"views": "all" if self.view_filter is None else list(self.views), **{k: getattr(self, k) for k in keep}}
