"""Parity of the Qwen2-VL image pipeline with `transformers.Qwen2VLImageProcessorPil`, and its patch layout.

Tolerance: 1e-5 absolute on pixel_values (float32), exact on grids.
"""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw
from transformers import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference_smart_resize

from merit_jax.data import Example, Message
from merit_jax.data.vision import (
    ImageFile,
    ImagePixels,
    ImageProcessingConfig,
    image_token_count,
    load_image,
    process_example_images,
    process_image,
    smart_resize,
)

TOLERANCE = 1e-5


def _scene(width, height, seed):
    """A photo-like RGB image: smooth gradients, shapes with hard edges, and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1), 128 + 0 * x], axis=-1)
    noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(noisy)
    draw = ImageDraw.Draw(image)
    draw.ellipse([width // 5, height // 5, width // 2, height // 2], fill=(250, 20, 40))
    draw.rectangle([width // 2, height // 2, width - 2, height - 2], outline=(0, 0, 0), width=max(1, width // 40))
    return image


# (width, height, file format, what the case covers)
CASES = [
    (640, 480, "PNG", "no bound reached"),
    (1500, 900, "JPEG", "downscaled by max_pixels"),
    (2000, 300, "JPEG", "wide, downscaled"),
    (33, 17, "PNG", "upscaled by min_pixels"),
    (100, 1000, "PNG", "tall"),
    (57, 43, "JPEG", "sides round half to even"),
]


@pytest.fixture(scope="module")
def reference_processor():
    return Qwen2VLImageProcessorPil()


def _assert_matches_reference(reference, image, processed):
    expected = reference(images=[image], return_tensors="np")
    assert processed.pixel_values.dtype == np.float32
    assert processed.pixel_values.shape == expected["pixel_values"].shape
    assert np.array_equal(processed.grid_thw, expected["image_grid_thw"][0])
    assert np.abs(processed.pixel_values - expected["pixel_values"]).max() <= TOLERANCE


@pytest.mark.parametrize("width, height, file_format, case", CASES)
def test_matches_reference_on_saved_images(tmp_path, reference_processor, width, height, file_format, case):
    path = tmp_path / f"scene.{file_format.lower()}"
    _scene(width, height, seed=width).save(path, format=file_format)

    processed = process_image(load_image(path))
    with Image.open(path) as image:
        _assert_matches_reference(reference_processor, image, processed)


def test_bounds_take_effect(reference_processor):
    config = ImageProcessingConfig()
    downscaled = process_image(_scene(1500, 900, 0), config)
    upscaled = process_image(_scene(33, 17, 0), config)
    _, grid_h, grid_w = downscaled.grid_thw
    assert grid_h * grid_w * 14 * 14 <= config.max_pixels
    assert grid_h * 14 < 900
    _, grid_h, grid_w = upscaled.grid_thw
    assert grid_h * grid_w * 14 * 14 >= config.min_pixels
    assert grid_w * 14 > 33


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK"])
def test_matches_reference_on_other_modes(reference_processor, mode):
    image = _scene(90, 60, seed=3).convert(mode)
    if mode in ("RGBA", "LA"):
        alpha = Image.new("L", image.size, 0)
        ImageDraw.Draw(alpha).rectangle([10, 10, 60, 50], fill=200)
        image.putalpha(alpha)
    _assert_matches_reference(reference_processor, image, process_image(image))


def test_matches_reference_with_custom_bounds():
    config = ImageProcessingConfig(min_pixels=16 * 28 * 28, max_pixels=64 * 28 * 28)
    reference = Qwen2VLImageProcessorPil(min_pixels=config.min_pixels, max_pixels=config.max_pixels)
    for width, height in ((640, 480), (30, 30), (300, 290)):
        image = _scene(width, height, seed=height)
        _assert_matches_reference(reference, image, process_image(image, config))


def test_token_count_is_patches_over_merge_area():
    for width, height in ((640, 480), (33, 17), (1500, 900), (56, 56)):
        processed = process_image(_scene(width, height, seed=1))
        rows = processed.pixel_values.shape[0]
        assert rows % 4 == 0
        assert processed.num_tokens == rows // 4
        assert image_token_count(width, height) == processed.num_tokens
    assert process_image(_scene(56, 56, seed=1)).num_tokens == 4


def test_patch_rows_follow_merge_blocks():
    # Every 14x14 patch of a 56x112 image gets its own gray level, then rows are matched back.
    # Expected order: 2x2 blocks in raster order, and the 4 patches of a block in raster order.
    levels = np.arange(4 * 8, dtype=np.uint8).reshape(4, 8) * 7
    pixels = np.repeat(np.repeat(levels, 14, axis=0), 14, axis=1)
    rgb = np.stack([pixels] * 3, axis=-1)
    processed = process_image(rgb)
    assert processed.grid_thw.tolist() == [1, 4, 8]

    mean, std = 0.48145466, 0.26862954
    first_values = processed.pixel_values[:, 0] * std + mean
    seen = [int(np.argmin(np.abs(levels.ravel() / 255 - value))) for value in first_values]
    expected = []
    for block_row in range(2):
        for block_col in range(4):
            for row in range(2):
                for col in range(2):
                    expected.append((2 * block_row + row) * 8 + 2 * block_col + col)
    assert seen == expected


def test_temporal_copies_are_identical():
    processed = process_image(_scene(56, 56, seed=4))
    rows = processed.pixel_values.reshape(-1, 3, 2, 14, 14)
    assert np.array_equal(rows[:, :, 0], rows[:, :, 1])


def test_smart_resize_matches_reference_on_many_sizes():
    rng = np.random.default_rng(0)
    sizes = [(int(h), int(w)) for h, w in rng.integers(1, 4000, size=(300, 2))]
    sizes += [(42, 42), (70, 70), (14, 14), (28, 5000), (1, 150)]
    for height, width in sizes:
        if max(height, width) / min(height, width) > 200:
            continue
        assert smart_resize(height, width) == reference_smart_resize(height, width, factor=28, max_pixels=28 * 28 * 1280)


def test_smart_resize_rejects_extreme_aspect_ratio():
    with pytest.raises(ValueError, match="aspect ratio 250.0, above 200; crop or pad"):
        smart_resize(10, 2500)


def test_accepts_pixels_and_grayscale_arrays():
    gray = np.tile(np.arange(56, dtype=np.uint8), (56, 1))
    from_gray = process_image(gray)
    from_rgb = process_image(np.stack([gray] * 3, axis=-1))
    from_reference = process_image(ImagePixels(np.stack([gray] * 3, axis=-1)))
    assert np.array_equal(from_gray.pixel_values, from_rgb.pixel_values)
    assert np.array_equal(from_reference.pixel_values, from_rgb.pixel_values)
    with pytest.raises(ValueError, match="must be uint8"):
        process_image(gray.astype(np.float32))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"min_pixels": 10_000, "max_pixels": 5_000}, "min_pixels=10000 exceeds max_pixels=5000"),
        ({"min_pixels": 100, "max_pixels": 700}, "below one merged patch"),
        ({"patch_size": 0}, "patch_size must be a positive integer"),
        ({"image_std": (0.5, 0.0, 0.5)}, "image_std must be positive"),
    ],
)
def test_config_rejects_invalid_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        ImageProcessingConfig(**settings)


def test_config_reads_preprocessor_json(tmp_path):
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2}))
    sized = tmp_path / "sized.json"
    sized.write_text(json.dumps({"size": {"shortest_edge": 4096, "longest_edge": 200704}, "temporal_patch_size": 2}))
    assert ImageProcessingConfig.from_preprocessor_config(legacy).max_pixels == 12845056
    assert ImageProcessingConfig.from_preprocessor_config(sized).min_pixels == 4096
    assert ImageProcessingConfig.from_preprocessor_config(sized).max_pixels == 200704

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"min_pixels": 10, "max_pixels": 5}))
    with pytest.raises(ValueError, match="broken.json: .*exceeds max_pixels"):
        ImageProcessingConfig.from_preprocessor_config(broken)


def test_example_images_use_cache(tmp_path):
    path = tmp_path / "scene.png"
    _scene(80, 60, seed=5).save(path)
    pixels = ImagePixels(np.zeros((56, 56, 3), np.uint8))
    messages = (Message("user", "<image><image>Compare."), Message("assistant", "same"))
    example = Example("t", messages, (pixels, pixels))

    cache = {}
    first, second = process_example_images(example, cache=cache)
    assert first is second
    assert len(cache) == 1

    with_file = Example("t", (Message("user", "<image>Describe."), Message("assistant", "x")), (ImageFile(str(path)),))
    (processed,) = process_example_images(with_file)
    assert np.array_equal(processed.pixel_values, process_image(load_image(path)).pixel_values)
