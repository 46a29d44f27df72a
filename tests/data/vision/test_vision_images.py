"""Tests for image references and safe loading: header-first size checks, corrupt files, modes."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from merit_jax.data import Example, Message
from merit_jax.data.vision import (
    DEFAULT_MAX_PIXELS_ON_DISK,
    ImageError,
    ImageFile,
    ImagePixels,
    load_image,
    read_image_size,
)


def _png_header_only(width, height):
    """A PNG whose header claims `width` x `height` RGB pixels, followed by almost no pixel data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def photo_path(tmp_path):
    rng = np.random.default_rng(0)
    pixels = (rng.random((30, 50, 3)) * 255).astype(np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


def test_load_png_from_path_bytes_and_reference(photo_path):
    path, pixels = photo_path
    from_path = load_image(path)
    from_bytes = load_image(path.read_bytes())
    from_reference = load_image(ImageFile(str(path), origin="data.json:3"))
    assert from_path.dtype == np.uint8
    assert from_path.shape == (30, 50, 3)
    assert np.array_equal(from_path, pixels)
    assert np.array_equal(from_bytes, pixels)
    assert np.array_equal(from_reference, pixels)


def test_read_image_size_returns_width_height(photo_path):
    path, _ = photo_path
    assert read_image_size(path) == (50, 30)
    assert read_image_size(ImagePixels(np.zeros((7, 9, 3), np.uint8))) == (9, 7)


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    rgb = load_image(path)
    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[3, 3].tolist() == [255, 255, 255]


def test_grayscale_and_palette_convert_to_rgb(tmp_path):
    Image.new("L", (5, 3), 77).save(tmp_path / "gray.png")
    Image.new("RGB", (5, 3), (1, 2, 3)).convert("P").save(tmp_path / "palette.gif")
    assert load_image(tmp_path / "gray.png")[0, 0].tolist() == [77, 77, 77]
    assert load_image(tmp_path / "palette.gif").shape == (3, 5, 3)


def test_missing_file_names_record_and_path(tmp_path):
    missing = str(tmp_path / "nowhere.png")
    with pytest.raises(ImageError, match=r"^train\.json:7 \(record 3\): image file .*nowhere\.png not found"):
        load_image(ImageFile(missing, origin="train.json:7 (record 3)"))


def test_corrupt_file_is_rejected(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(1).bytes(500))
    with pytest.raises(ImageError, match="noise.png is not a readable image.*convert it to PNG or JPEG"):
        load_image(path, origin="data.json:2")


def test_truncated_file_fails_at_decoding(tmp_path):
    pixels = (np.random.default_rng(2).random((64, 64, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert read_image_size(path) == (64, 64)
    with pytest.raises(ImageError, match="cut.png could not be decoded.*corrupt or truncated"):
        load_image(path)


def test_oversized_image_rejected_by_configured_limit(photo_path):
    path, _ = photo_path
    with pytest.raises(ImageError, match=r"50x30 = 1,500 pixels, above max_pixels_on_disk=1,000"):
        load_image(path, max_pixels_on_disk=1000)
    assert load_image(path, max_pixels_on_disk=1500).shape == (30, 50, 3)


def test_bomb_header_rejected_before_decoding(tmp_path):
    # 10,000 x 10,000 RGB would take 300 MB. The pixel data is a few bytes, so decoding
    # would fail with a truncation error: the size error proves nothing was decoded.
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(10_000, 10_000))
    assert read_image_size(path) == (10_000, 10_000)
    assert 10_000 * 10_000 > DEFAULT_MAX_PIXELS_ON_DISK
    with pytest.raises(ImageError, match="100,000,000 pixels, above max_pixels_on_disk"):
        load_image(path)


def test_bomb_beyond_pillow_limit_rejected(tmp_path):
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(_png_header_only(40_000, 40_000))


def test_sixteen_bit_mode_rejected(tmp_path):
    path = tmp_path / "depth.png"
    Image.fromarray(np.full((4, 4), 40_000, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    with pytest.raises(ImageError, match="pixel mode 'I.*save it as 8-bit RGB"):
        load_image(path)


def test_image_error_is_value_error():
    assert issubclass(ImageError, ValueError)


@pytest.mark.parametrize("limit", [0, -5, 2.5, True])
def test_invalid_limit_raises(photo_path, limit):
    with pytest.raises(ValueError, match="max_pixels_on_disk must be a positive integer"):
        load_image(photo_path[0], max_pixels_on_disk=limit)


def test_pixels_compare_by_content_and_are_read_only():
    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    first = ImagePixels(array, origin="a")
    second = ImagePixels(array.copy(), origin="b")
    different = ImagePixels(array[::-1].copy())
    assert first == second
    assert hash(first) == hash(second)
    assert first != different
    with pytest.raises(ValueError):
        first.pixels[0, 0, 0] = 1

    # The reference keeps its own copy, so later writes to the source array do not leak in.
    array[0, 0, 0] = 99
    assert first.pixels[0, 0, 0] == 0


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)])
def test_pixels_reject_other_arrays(bad):
    with pytest.raises(ValueError, match=r"uint8 array of shape \(H, W, 3\)"):
        ImagePixels(bad)


def test_examples_with_images_stay_hashable():
    pixels = ImagePixels(np.zeros((2, 2, 3), np.uint8))
    messages = (Message("user", "<image>Which digit?"), Message("assistant", "0"))
    first = Example("t", messages, (pixels,))
    second = Example("t", messages, (ImagePixels(np.zeros((2, 2, 3), np.uint8)),))
    assert first == second
    assert hash(first) == hash(second)
    assert first != Example("t", messages, (ImageFile("/x.png"),))


def test_image_file_equality_ignores_origin():
    assert ImageFile("/a.png", origin="x:1") == ImageFile("/a.png", origin="y:2")
    with pytest.raises(TypeError):
        ImageFile("")
