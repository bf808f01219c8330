"""The synthetic dataset folder: PNGs with provenance text chunks, parquet shards and a card.

Layout (``datasets.load_dataset(str(OUT))`` reads it through the card's ``configs:``)::

    OUT/images/NNNNNN.png            image i, written atomically, provenance in a PNG text chunk
    OUT/data/train-0000K-of-0000N.parquet   the same PNG bytes + one column per provenance field
    OUT/generation_config.json       the parameters every image of the folder shares
    OUT/synthetic_manifest.json      pixel sha256 + seed, prompt, adapter hash of every image
    OUT/README.md                    dataset card: counts per class, generation parameters

(names from :mod:`hf_cxr_diffusion.artefacts`).

Each image is complete or absent (atomic rename) and carries its own provenance, so the parquet
shards and the card are rebuilt from the PNGs alone: a killed run never leaves a half entry.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from hf_cxr_diffusion.artefacts import (
    CARD_FILE,
    PNG_PROVENANCE_KEY,
    PNG_SYNTHETIC_KEY,
    PNG_SYNTHETIC_VALUE,
    SYNTHETIC_DATA_DIR,
    shard_name,
    synthetic_image_name,
)
from hf_cxr_diffusion.io import atomic_path, write_text_atomic

#: images per parquet shard
SHARD_SIZE = 1000


def image_path(out: Path, index: int) -> Path:
    return out / synthetic_image_name(index)


def save_png(image: Image.Image, path: Path, record: Mapping[str, Any]) -> None:
    """Save ``image`` atomically as PNG with text chunks marking it synthetic + its provenance.

    Leftovers of a kill (hidden ``.*.tmp`` siblings) are removed by :func:`hf_cxr_diffusion.runs.remove_stale_temporaries`.
    """
    info = PngInfo()
    info.add_text(PNG_SYNTHETIC_KEY, PNG_SYNTHETIC_VALUE)
    info.add_text(PNG_PROVENANCE_KEY, json.dumps(dict(record), sort_keys=True))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)


def read_png_provenance(path: str | Path | bytes) -> dict[str, Any]:
    """The provenance record stored in a synthetic PNG (a path or the PNG bytes)."""
    source = io.BytesIO(path) if isinstance(path, bytes) else path
    with Image.open(source) as img:
        text = dict(getattr(img, "text", {}) or {})
    if text.get(PNG_SYNTHETIC_KEY) != PNG_SYNTHETIC_VALUE or PNG_PROVENANCE_KEY not in text:
        raise ValueError(f"{path if not isinstance(path, bytes) else 'image'} carries no synthetic provenance chunk")
    return json.loads(text[PNG_PROVENANCE_KEY])


def is_intact_png(path: Path) -> bool:
    """Whether ``path`` decodes completely and carries the provenance chunk (a resumed run redraws it if not)."""
    try:
        with Image.open(path) as img:
            img.load()
        read_png_provenance(path)
    except (OSError, SyntaxError, ValueError):  # truncated / not a PNG / no or bad provenance chunk
        return False
    return True


def features_for(label_names: Sequence[str]) -> Any:
    """``datasets.Features`` of the synthetic dataset (``labels`` as ``List(ClassLabel)``)."""
    from datasets import ClassLabel, Features, Image as ImageFeature, List, Value

    return Features(
        {
            "image": ImageFeature(),
            "prompt": Value("string"),
            "labels": List(ClassLabel(names=list(label_names))),
            "index": Value("int64"),
            "seed": Value("int64"),
            "scheduler": Value("string"),
            "steps": Value("int32"),
            "guidance": Value("float64"),
            "negative_prompt": Value("string"),
            "base_model": Value("string"),
            "adapter": Value("string"),
            "adapter_sha256": Value("string"),
            "synthetic": Value("bool"),
        }
    )


def write_dataset(out: Path, records: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> None:
    """Write the parquet shards (from the PNGs on disk) and the dataset card, each atomically."""
    from datasets import Dataset

    label_names = list(config["label_names"])
    features = features_for(label_names)
    n_shards = max(1, math.ceil(len(records) / SHARD_SIZE))
    num_bytes = 0  # the split's Arrow size, which `datasets` expects in the card's dataset_info
    with atomic_path(out / SYNTHETIC_DATA_DIR) as tmp:
        tmp.mkdir()
        for k in range(n_shards):
            rows = records[k * SHARD_SIZE : (k + 1) * SHARD_SIZE]
            columns: dict[str, list[Any]] = {name: [] for name in features}
            for rec in rows:
                for name in features:
                    if name == "image":
                        columns[name].append({"bytes": image_path(out, rec["index"]).read_bytes(), "path": None})
                    else:
                        columns[name].append(rec.get(name))
            shard = Dataset.from_dict(columns, features=features)
            num_bytes += int(shard.data.nbytes)
            shard.to_parquet(str(tmp / shard_name("train", k, n_shards)))
    write_text_atomic(out / CARD_FILE, render_card(records, config, features, num_bytes))


def class_counts(records: Iterable[Mapping[str, Any]]) -> tuple[Counter, Counter]:
    """Counts per class (label combination, "(no finding)" when empty) and per single label."""
    combos: Counter = Counter()
    labels: Counter = Counter()
    for rec in records:
        combos[" + ".join(rec["labels"]) or "(no positive finding)"] += 1
        labels.update(rec["labels"])
    return combos, labels


def render_card(records: Sequence[Mapping[str, Any]], config: Mapping[str, Any], features: Any, num_bytes: int) -> str:
    """The dataset card: YAML header with ``configs:`` + features and split sizes (``num_bytes``: Arrow bytes), counts and parameters."""
    n = len(records)
    header = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": f"{SYNTHETIC_DATA_DIR}/train-*.parquet"}]}],
        "dataset_info": {"features": features._to_yaml_list(), "splits": [{"name": "train", "num_bytes": num_bytes, "num_examples": n}]},
        "tags": ["synthetic", "chest-x-ray", "diffusers", "hf-cxr-diffusion"],
        "task_categories": ["image-classification", "text-to-image"],
        "size_categories": ["n<1K" if n < 1000 else "1K<n<10K" if n < 10000 else "10K<n<100K"],
    }
    combos, labels = class_counts(records)
    params = {k: config[k] for k in ("base_model", "adapter", "adapter_sha256", "adapter_method", "scheduler", "steps",
                                     "guidance", "negative_prompt", "seed", "height", "width", "dtype") if k in config}
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).rstrip(),
        "---",
        "",
        "# Synthetic chest X-ray dataset",
        "",
        f"**All {n} images are synthetic**, generated by a diffusion model with `cxr-diffusion generate`;",
        "they show no real patient. Each PNG carries a `synthetic` text chunk and its full provenance",
        "(JSON in the `provenance` chunk); the same fields are columns of the dataset.",
        "Image *i* was generated with seed `seed + i` (one generator per image), so any image can be",
        "regenerated on its own from these parameters.",
        "",
        "## Generation parameters",
        "",
        "| parameter | value |",
        "|---|---|",
        *[f"| {k} | `{v}` |" for k, v in params.items()],
        "",
        "## Images per class",
        "",
        "| class (positive findings) | images |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(combos.items())],
        "",
        "## Images per label",
        "",
        "| label | images |",
        "|---|---|",
        *[f"| {name} | {labels.get(name, 0)} |" for name in config["label_names"]],
        "",
        "## Use",
        "",
        "```python",
        "from datasets import load_dataset",
        "ds = load_dataset(\"path/to/this/folder\")",
        "```",
        "",
    ]
    return "\n".join(lines)
