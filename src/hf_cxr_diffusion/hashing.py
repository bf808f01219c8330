"""The one place that hashes things (torch-free): files, byte strings and JSON-able values."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

_BLOCK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_json(value: Any) -> str:
    """Hex sha256 of ``value`` as canonical JSON (sorted keys, no spaces; non-JSON values via ``str``)."""
    return sha256_bytes(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode())


def sha256_pixels(image: Any) -> str:
    """Hex sha256 of a decoded image's mode, size and pixel bytes (a PIL image or an image file path):
    equal for the same pixels whatever the file's metadata chunks or compression."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as img:
            return sha256_pixels(img)
    header = f"{image.mode} {image.size[0]}x{image.size[1]}\n".encode()
    return sha256_bytes(header + image.tobytes())
