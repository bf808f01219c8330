"""Benchmark ``prepare``: the metadata pass over the full CheXpert label file and image throughput.

1. Prompts-only preparation of torchxrayvision's ``chexpert_train.csv.gz`` (223,414 rows; all views):
   our vectorised plan (read + labels + prompts + splits) and the full ``DatasetDict`` build, against a
   per-row Python baseline (csv.DictReader + a loop per row) doing the same labels/prompt/split work.
2. Image preparation throughput on generated 1024x1024 JPEGs at CheXpert paths: images/s with
   1 process vs ``--num-proc 2``.

Run: ``python bench/prepare.py [--images 160] [--resolution 512]``
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from hf_cxr_diffusion.data.labels import CHEXPERT_LABELS
from hf_cxr_diffusion.data.plan import plan_dataset
from hf_cxr_diffusion.data.prepare import prepare, prepare_dataset
from hf_cxr_diffusion.data.prompts import clip_tokenizer


def chexpert_csv() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "chexpert_train.csv.gz"


def per_row_baseline(path: Path) -> int:
    """What hand-written preparation scripts do: one Python iteration per row (U-Ones, findings prompt, hash split)."""
    prompts = []
    with gzip.open(path, "rt") as fh:
        for row in csv.DictReader(fh):
            pos = [n for n in CHEXPERT_LABELS if row[n] in ("1.0", "-1.0")]
            if any(n not in ("No Finding", "Support Devices") for n in pos) and "No Finding" in pos:
                pos.remove("No Finding")
            patient = row["Path"].split("/")[2]
            unit = int.from_bytes(hashlib.sha256(patient.encode()).digest()[:8], "big") / 2**64
            split = "train" if unit < 0.8 else "validation" if unit < 0.9 else "test"
            prompts.append((f"Chest X-ray of a subject with {', '.join(pos) or 'No Finding'}", split))
    return len(prompts)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_metadata(root: Path) -> list[tuple[str, int, float]]:
    csv_dir = root / "CheXpert-v1.0-small"
    csv_dir.mkdir(parents=True, exist_ok=True)
    (csv_dir / "train.csv.gz").symlink_to(chexpert_csv())
    tok = clip_tokenizer()
    n_base, t_base = timed(lambda: per_row_baseline(chexpert_csv()))
    plan, t_plan = timed(lambda: plan_dataset(corpus="chexpert", data_dir=root, views="all", tokenizer=tok))
    dsd, t_full = timed(lambda: prepare_dataset(corpus="chexpert", data_dir=root, views="all", images=False, tokenizer=tok))
    n = sum(len(d) for d in dsd.dataset.values())
    return [("per-row Python loop (baseline)", n_base, t_base), ("plan_dataset (vectorised)", len(plan.rows), t_plan),
            ("prepare_dataset(images=False)", n, t_full)]


def make_images(root: Path, n: int) -> None:
    folder = root / "CheXpert-v1.0-small"
    folder.mkdir(parents=True)
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_LABELS)
    lines = [header]
    rng = np.random.default_rng(0)
    base = (np.linspace(0, 255, 1024)[None, :] * np.linspace(0.3, 1, 1024)[:, None]).astype(np.uint8)
    for i in range(n):
        rel = f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view1_frontal.jpg"
        (root / rel).parent.mkdir(parents=True)
        noisy = np.clip(base + rng.integers(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(root / rel, quality=90)
        lines.append(f"{rel},Female,60,Frontal,AP,1.0" + "," * (len(CHEXPERT_LABELS) - 1))
    (folder / "train.csv").write_text("\n".join(lines) + "\n")


def bench_images(root: Path, n: int, resolution: int) -> list[tuple[int, float]]:
    make_images(root / "corpus", n)
    tok = clip_tokenizer()
    rows = []
    for procs in (1, 2):
        _, t = timed(lambda: prepare(corpus="chexpert", data_dir=root / "corpus", output_dir=root / f"out{procs}", resolution=resolution,
                                     num_proc=procs, tokenizer=tok))
        rows.append((procs, t))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--resolution", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        meta = bench_metadata(Path(tmp) / "meta")
        imgs = bench_images(Path(tmp) / "img", args.images, args.resolution)
    base = meta[0][2]
    print("\n## Metadata pass: full CheXpert train.csv (prompts only, all views)\n")
    print("| step | rows | seconds | rows/s | time vs baseline |")
    print("|---|---|---|---|---|")
    for name, n, t in meta:
        print(f"| {name} | {n:,} | {t:.2f} | {n / t:,.0f} | {t / base:.2f}x |")
    print(f"\n## Image preparation: {args.images} generated 1024x1024 JPEGs -> {args.resolution}px PNG parquet\n")
    print("| processes | seconds | images/s | speed-up vs 1 process |")
    print("|---|---|---|---|")
    for procs, t in imgs:
        print(f"| {procs} | {t:.2f} | {args.images / t:.1f} | {imgs[0][1] / t:.2f}x |")


if __name__ == "__main__":
    main()
