"""Helpers shared by the hub tests and their fixtures (constants, seeded pipeline call, PNG writer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

PROMPT = "Chest X-ray of a subject with Cardiomegaly"


def run_pipe(pipe) -> np.ndarray:
    """One seeded denoising step of the tiny pipeline, as latents (the U-Net's output, no VAE clipping)."""
    generator = torch.Generator("cpu").manual_seed(0)
    latents = pipe(PROMPT, num_inference_steps=1, guidance_scale=4.0, generator=generator, output_type="latent").images
    return latents.detach().numpy()


def png(path: Path, value: int, text: dict[str, str] | None = None, image: Image.Image | None = None) -> Path:
    """Save ``image`` (default: a flat 16 px grey ``value``) with PNG text chunks ``text``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(image if image is not None else Image.fromarray(np.full((16, 16), value, dtype=np.uint8)),
                               text or {}))
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def shard(folder: Path) -> Path:
    """The one parquet shard of a synthetic dataset folder."""
    (path,) = sorted((folder / "data").glob("*.parquet"))
    return path


def image_bytes(folder: Path, index: int) -> bytes:
    """The PNG bytes of row ``index`` of the folder's shard."""
    import pyarrow.parquet as pq

    return pq.read_table(shard(folder)).column("image")[index].as_py()["bytes"]


def tamper_shard(folder: Path, *, replace: dict[int, bytes] | None = None, drop_column: str | None = None) -> None:
    """Rewrite the folder's shard as an adversary would: image bytes of rows replaced, or a column dropped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(shard(folder))
    if replace:
        images = table.column("image").to_pylist()
        for index, data in replace.items():
            images[index] = {"bytes": data, "path": None}
        table = table.set_column(table.schema.get_field_index("image"), "image",
                                 pa.array(images, type=table.schema.field("image").type))
    if drop_column:
        table = table.drop_columns([drop_column])
    pq.write_table(table, shard(folder))


def png_bytes(image: Image.Image, text: dict[str, str]) -> bytes:
    """``image`` encoded as PNG with the text chunks ``text``."""
    import io

    info = PngImagePlugin.PngInfo()
    for key, val in text.items():
        info.add_text(key, val)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def local_paths_in(folder: Path) -> dict[str, list[str]]:
    """Exported files holding a path of this machine (the temp, home or current folder): their bytes, and the
    decoded rows and PNG text chunks of parquet shards (compressed columns hide from a byte search)."""
    import io
    import tempfile

    import pyarrow.parquet as pq

    needles = {str(Path(tempfile.gettempdir()).resolve()) + "/", str(Path.home()) + "/", str(Path.cwd()) + "/"}
    hits: dict[str, list[str]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        texts = [path.read_bytes().decode("latin-1")]
        if path.suffix == ".parquet":
            for row in pq.read_table(path).to_pylist():
                image = row.pop("image", None)
                texts.append(json.dumps(row))
                if image and image.get("bytes"):
                    texts.append(json.dumps(Image.open(io.BytesIO(image["bytes"])).text))
        found = sorted({n for n in needles for t in texts if n in t})
        if found:
            hits[path.relative_to(folder).as_posix()] = found
    return hits
