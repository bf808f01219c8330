"""Image decoding: bit depth, palette/RGBA, resize + centre crop without distortion."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from hf_cxr_diffusion.data.images import DecodeSpec, encode_png, load_cxr, process_image, resize_center_crop, to_gray8


def test_16bit_png_is_scaled_by_bit_depth_not_clipped(tmp_path):
    arr = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(arr).save(tmp_path / "x16.png")
    with Image.open(tmp_path / "x16.png") as img:
        assert img.mode.startswith("I")
        out = np.asarray(to_gray8(img))
    np.testing.assert_array_equal(out[0], [0, 1, 128, 255])


def test_palette_rgba_and_rgb_become_grayscale(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    pal = Image.fromarray(rgb).convert("P")
    rgba = Image.fromarray(np.dstack([rgb, np.full((8, 8), 255, np.uint8)]), "RGBA")
    for img in (pal, rgba, Image.fromarray(rgb)):
        out = to_gray8(img)
        assert out.mode == "L"
        np.testing.assert_array_equal(np.asarray(out), np.asarray(img.convert("RGB").convert("L")))
        assert 55 < np.asarray(out).mean() < 65  # ITU-R 601 luma of pure red 200: ~60


def test_resize_keeps_aspect_and_crops_centre():
    # 200x100 image: left half black, right half white, a 2-px grey stripe in the middle columns
    arr = np.zeros((100, 200), np.uint8)
    arr[:, 100:] = 255
    out = np.asarray(resize_center_crop(Image.fromarray(arr), 50))
    assert out.shape == (50, 50)
    # short side 100 -> 50, long side 200 -> 100, centre crop keeps columns 25..75 of the 100: the edge stays central
    assert out[:, :20].max() < 10 and out[:, 30:].min() > 245


@pytest.mark.parametrize("fmt,mode", [("PNG", "L"), ("JPEG", "L"), ("PNG", "I;16"), ("PNG", "RGBA")])
def test_load_cxr_any_format_to_requested_resolution(tmp_path, fmt, mode):
    arr = (np.linspace(0, 1, 300 * 240).reshape(240, 300) * (65535 if mode == "I;16" else 255))
    img = Image.fromarray(arr.astype(np.uint16 if mode == "I;16" else np.uint8))
    if mode == "RGBA":
        img = img.convert("RGBA")
    path = tmp_path / f"img.{fmt.lower()}"
    img.save(path, format=fmt)
    out = load_cxr(path, 64)
    assert out.size == (64, 64) and out.mode == "L"
    assert 100 < np.asarray(out).mean() < 155  # a full-range ramp stays mid-grey, not clipped to white


def test_process_image_reports_missing_and_corrupt(tmp_path):
    assert process_image((str(tmp_path / "nope.png"), DecodeSpec(32))) == (None, "missing")
    good = io.BytesIO()
    Image.fromarray(np.zeros((40, 40), np.uint8) + 7).save(good, format="PNG")
    (tmp_path / "trunc.png").write_bytes(good.getvalue()[:60])
    png, why = process_image((str(tmp_path / "trunc.png"), DecodeSpec(32)))
    assert png is None and why.startswith("unreadable image")
    png, why = process_image((str(tmp_path / "ok.png") if (tmp_path / "ok.png").write_bytes(good.getvalue()) else "", DecodeSpec(32)))
    assert why is None and Image.open(io.BytesIO(png)).size == (32, 32)


@pytest.fixture(scope="module")
def phantom_jpegs(tmp_path_factory):
    from hf_cxr_diffusion.phantoms.corpus import make_phantoms

    corpus = make_phantoms(tmp_path_factory.mktemp("jpeg") / "c", "chexpert", n=3, seed=0, resolution=512)
    return sorted(corpus.rglob("*.jpg"))


def test_exact_decoding_is_full_decode_then_resize(phantom_jpegs):
    for path in phantom_jpegs:
        with Image.open(path) as img:
            reference = resize_center_crop(img.convert("L"), 256)
        assert np.array_equal(np.asarray(load_cxr(path, 256, jpeg_draft=False)), np.asarray(reference))


def test_reduced_size_jpeg_decoding_is_within_the_documented_tolerance(phantom_jpegs):
    """Pillow's draft() halves 512 px in the DCT domain: on phantoms mean |diff| ~1.2 grey levels, 99th pct 4, max 15."""
    diffs = []
    for path in phantom_jpegs:
        fast = np.asarray(load_cxr(path, 256, jpeg_draft=True), np.int16)
        exact = np.asarray(load_cxr(path, 256, jpeg_draft=False), np.int16)
        diffs.append(np.abs(fast - exact))
    diff = np.stack(diffs)
    assert 0 < diff.mean() <= 1.5 and np.percentile(diff, 99) <= 6  # README: "reduced-size JPEG decoding"


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (33, 17), (64, 64)])
def test_sub_filter_png_is_lossless_and_a_standard_png(shape):
    """--png-filter sub: every pixel survives (uint8 wrap-around included) and Pillow decodes it as an 8-bit PNG."""
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    pixels[:, ::2] = 255 - pixels[:, ::2] // 8  # large jumps both ways between neighbours
    for level in (0, 1, 6, 9):
        data = encode_png(Image.fromarray(pixels, "L"), level, "sub")
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "PNG" and img.mode == "L" and img.size == (shape[1], shape[0])
            np.testing.assert_array_equal(np.asarray(img), pixels)


def test_sub_filter_png_differs_from_pillows_and_refuses_other_modes():
    img = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 3, (64, 1)), "L")
    assert encode_png(img, 6, "sub") != encode_png(img, 6)  # the option changes the encoder, not just a label
    assert encode_png(img, 6) == encode_png(img, 6, "adaptive")
    with pytest.raises(ValueError, match="mode 'L'"):
        encode_png(img.convert("RGB"), 1, "sub")
    with pytest.raises(ValueError, match="png_filter 'paeth'"):
        encode_png(img, 1, "paeth")
    out, reason = process_image(("unused", DecodeSpec(8, png_filter="sub")))
    assert out is None and reason == "missing"
