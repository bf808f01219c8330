"""Decode chest X-rays (8/16-bit PNG, JPEG, palette, RGBA) to 8-bit grayscale, resize and centre-crop.

Kept free of heavy imports: worker processes of ``--num-proc`` import only this module.
"""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

_HIGH_DEPTH_MODES = {"I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16}
#: Pillow's own decompression-bomb threshold (``PIL.Image.MAX_IMAGE_PIXELS`` by default), ~9459 x 9459 pixels
DEFAULT_MAX_PIXELS = 89_478_485
#: zlib level of the written PNGs: every level decodes to the same pixels; 1 encodes ~3x faster than Pillow's default 6
#: (encoding was half of ``prepare``'s CPU time per image at 6) for files ~15% larger
DEFAULT_PNG_COMPRESS_LEVEL = 1
#: PNG row filters of the written PNGs: Pillow's per-row adaptive choice (the default), or one Sub filter for every row
PNG_FILTERS = ("adaptive", "sub")


@dataclass(frozen=True)
class DecodeSpec:
    """How every image of a prepared dataset is decoded and re-encoded (sent with each job to worker processes).

    Args:
        resolution: output side in pixels (short side resized, centre crop).
        max_pixels: images with more pixels are refused before decoding (decompression-bomb guard).
        jpeg_draft: let the JPEG decoder downscale by 2/4/8 in the DCT domain (Pillow ``draft``) to no
            less than ``resolution`` before the exact resize.
        png_compress_level: zlib level 0-9 of the written PNG (lossless at every level: only speed and size change).
        png_filter: ``"adaptive"`` (Pillow's encoder: per row the filter with the smallest output) or ``"sub"``
            (every row Sub-filtered with numpy, then zlib: lossless; at level 1 ~1.7x the images/s of ``"adaptive"``
            at level 1, files about the same size).
    """

    resolution: int
    max_pixels: int = DEFAULT_MAX_PIXELS
    jpeg_draft: bool = True
    png_compress_level: int = DEFAULT_PNG_COMPRESS_LEVEL
    png_filter: str = "adaptive"


class ImageTooLarge(ValueError):
    """An image has more pixels than allowed (``--max-image-pixels``)."""


@contextlib.contextmanager
def _own_pixel_limit() -> Iterator[None]:
    """Turn off Pillow's global bomb check while :func:`load_cxr` applies its own limit from the header."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def to_gray8(img: Image.Image) -> Image.Image:
    """Any PIL image -> mode "L". 16-bit data is scaled by its bit depth (65535 -> 255), never clipped."""
    if img.mode == "L":
        return img
    if img.mode in _HIGH_DEPTH_MODES or img.mode == "I":
        arr = np.asarray(img).astype(np.float64)
        depth = _HIGH_DEPTH_MODES.get(img.mode) or (16 if arr.size and arr.max() > 255 else 8)
        if img.mode == "I" and arr.size and arr.max() >= 2**16:
            depth = 32
        scaled = np.clip(np.rint(arr * (255.0 / (2**depth - 1))), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.rint(arr * 255).astype(np.uint8), mode="L")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    return img.convert("L")


def resize_center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Resize so the short side is ``resolution`` (aspect kept), then crop the centre square."""
    w, h = img.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.LANCZOS)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def load_cxr(path: str | Path, resolution: int, *, max_pixels: int = DEFAULT_MAX_PIXELS, jpeg_draft: bool = True) -> Image.Image:
    """Open, check the pixel count, decode, convert to 8-bit grayscale, resize + centre-crop to ``resolution``."""
    with _own_pixel_limit(), Image.open(path) as img:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageTooLarge(f"{width}x{height} = {width * height:,} pixels > --max-image-pixels {max_pixels:,}")
        if jpeg_draft and img.format == "JPEG":
            img.draft("L", (resolution, resolution))  # DCT-domain downscale: faster, still >= resolution
        img.load()
        return resize_center_crop(to_gray8(img), resolution)


def encode_png(img: Image.Image, compress_level: int = DEFAULT_PNG_COMPRESS_LEVEL, png_filter: str = "adaptive") -> bytes:
    """``img`` as PNG bytes at zlib ``compress_level`` (lossless: the level and filter change size and speed, not pixels).

    ``png_filter="adaptive"`` is Pillow's encoder; ``"sub"`` (mode "L" only) writes the Sub-filtered rows with zlib
    directly: Pillow tries all five filters on every row, which costs more than zlib itself at low levels.
    """
    if png_filter == "sub":
        return _encode_png_sub(img, compress_level)
    if png_filter != "adaptive":
        raise ValueError(f"png_filter {png_filter!r} is not one of {', '.join(PNG_FILTERS)}")
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _encode_png_sub(img: Image.Image, compress_level: int) -> bytes:
    """8-bit grayscale PNG whose every row uses filter type 1 (Sub: each byte minus its left neighbour, mod 256)."""
    if img.mode != "L":
        raise ValueError(f"png_filter 'sub' encodes mode 'L' images, got mode {img.mode!r}")
    pixels = np.asarray(img, dtype=np.uint8)
    height, width = pixels.shape
    rows = np.empty((height, width + 1), np.uint8)
    rows[:, 0] = 1
    rows[:, 1] = pixels[:, 0]
    np.subtract(pixels[:, 1:], pixels[:, :-1], out=rows[:, 2:])  # uint8 arithmetic wraps mod 256, as PNG specifies
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale, deflate, filter method 0, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level)) + _png_chunk(b"IEND", b""))


def process_image(job: tuple[str, DecodeSpec]) -> tuple[bytes | None, str | None]:
    """Worker: ``(path, spec)`` -> ``(png_bytes, None)`` or ``(None, reason)``; never raises on bad files."""
    path, spec = job
    try:
        img = load_cxr(path, spec.resolution, max_pixels=spec.max_pixels, jpeg_draft=spec.jpeg_draft)
        return encode_png(img, spec.png_compress_level, spec.png_filter), None
    except FileNotFoundError:
        return None, "missing"
    except ImageTooLarge as err:
        return None, f"too large ({err})"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return None, f"unreadable image ({type(err).__name__}: {err})"
