"""The Qwen2-VL / Qwen2.5-VL image pipeline: resize to multiples of 28 pixels, normalize, cut into patches.

The result equals `transformers.Qwen2VLImageProcessorPil` (transformers 5.25) on the same
image. Rows of `pixel_values` are 14x14 patches, ordered so that the 2x2 patches that the
vision merger turns into one language-model token are consecutive.
"""

import dataclasses
import json
import math
import os

import numpy as np
from PIL import Image

from merit_jax.data.tasks import Example
from merit_jax.data.vision.images import DEFAULT_MAX_PIXELS_ON_DISK, ImagePixels, load_image, to_rgb_array

# The normalization of OpenAI's CLIP, which Qwen2-VL and Qwen2.5-VL keep.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# `transformers`' smart_resize rejects images whose long side exceeds 200 times the short
# side, and so does ours.
MAX_ASPECT_RATIO = 200


@dataclasses.dataclass(frozen=True)
class ImageProcessingConfig:
    """Settings of the image pipeline, with the defaults of `Qwen2VLImageProcessorPil`.

    `min_pixels` and `max_pixels` bound the resized area in pixels. Checkpoints may set other
    bounds in their `preprocessor_config.json`; `from_preprocessor_config` reads them.
    """

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self):
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ImageProcessingConfig.{name} must be a positive integer, got {value!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"ImageProcessingConfig.min_pixels={self.min_pixels} exceeds max_pixels={self.max_pixels}; "
                "swap or fix them"
            )
        if self.max_pixels < self.factor**2:
            raise ValueError(
                f"ImageProcessingConfig.max_pixels={self.max_pixels} is below one merged patch "
                f"({self.factor}x{self.factor} = {self.factor**2} pixels); raise it"
            )
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"ImageProcessingConfig.{name} needs one value per RGB channel, got {value!r}")
        if min(self.image_std) <= 0:
            raise ValueError(f"ImageProcessingConfig.image_std must be positive, got {self.image_std!r}")

    @property
    def factor(self) -> int:
        """Side length in pixels that resized images are a multiple of (patch_size * merge_size)."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Length of one row of `pixel_values`: channels x temporal_patch_size x patch_size^2."""
        return 3 * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_preprocessor_config(cls, path: str | os.PathLike) -> "ImageProcessingConfig":
        """Read the settings from a checkpoint's `preprocessor_config.json`.

        Both spellings of the pixel bounds are read: top-level `min_pixels` and `max_pixels`,
        and `size.shortest_edge` and `size.longest_edge`, the names under which the image
        processor of transformers 5 stores the same bounds. Missing keys keep the defaults.
        """
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as handle:
                config = json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: cannot read the preprocessor config ({error}); check the file") from None
        if not isinstance(config, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")

        values = {}
        size = config.get("size") or {}
        for key, size_key in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
            if config.get(key) is not None:
                values[key] = config[key]
            elif isinstance(size, dict) and size.get(size_key) is not None:
                values[key] = size[size_key]
        for key in ("patch_size", "temporal_patch_size", "merge_size"):
            if config.get(key) is not None:
                values[key] = config[key]
        for key in ("image_mean", "image_std"):
            if config.get(key) is not None:
                values[key] = tuple(float(value) for value in config[key])
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None


@dataclasses.dataclass(frozen=True, eq=False)
class ProcessedImage:
    """One image ready for the vision tower.

    `pixel_values` float32 (grid_t * grid_h * grid_w, patch_dim) and `grid_thw` int64 (3,),
    the grid of patches in time, height and width.
    """

    pixel_values: np.ndarray
    grid_thw: np.ndarray
    merge_size: int = 2

    @property
    def num_tokens(self) -> int:
        """Number of `<|image_pad|>` tokens that represent this image in the token sequence."""
        return int(np.prod(self.grid_thw)) // self.merge_size**2


def smart_resize(
    height: int, width: int, *, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280
) -> tuple[int, int]:
    """Return the (height, width) that an image is resized to.

    Both sides become multiples of `factor`, the area lands in [min_pixels, max_pixels] as far
    as that rounding allows, and the aspect ratio changes little. Sides are first rounded to the
    nearest multiple (Python's round-half-to-even, as in `transformers`). When that area is
    too large, both sides shrink by one scale and are floored. When it is too small, both
    grow by one scale and are ceiled.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size {width}x{height} is empty; every image needs at least one pixel")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"image of {width}x{height} pixels has aspect ratio {ratio:.1f}, above {MAX_ASPECT_RATIO}; "
            "crop or pad it to a less extreme shape"
        )

    resized_height = round(height / factor) * factor
    resized_width = round(width / factor) * factor
    if resized_height * resized_width > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        resized_height = max(factor, math.floor(height / scale / factor) * factor)
        resized_width = max(factor, math.floor(width / scale / factor) * factor)
    elif resized_height * resized_width < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        resized_height = math.ceil(height * scale / factor) * factor
        resized_width = math.ceil(width * scale / factor) * factor
    return resized_height, resized_width


def image_token_count(width: int, height: int, config: ImageProcessingConfig = ImageProcessingConfig()) -> int:
    """Return the number of image tokens for an image of `width` x `height` pixels.

    This needs only the size, so `read_image_size` can budget tokens without decoding.
    """
    resized_height, resized_width = smart_resize(
        height, width, factor=config.factor, min_pixels=config.min_pixels, max_pixels=config.max_pixels
    )
    return (resized_height // config.factor) * (resized_width // config.factor)


def process_image(image, config: ImageProcessingConfig = ImageProcessingConfig()) -> ProcessedImage:
    """Resize, rescale, normalize and patchify one image.

    `image` is a Pillow image, an `ImagePixels`, or a uint8 array of shape (H, W, 3) or
    (H, W) (grayscale). Pillow images are converted to RGB with alpha composited onto white.
    """
    rgb = _as_rgb(image)
    height, width = rgb.shape[:2]

    # Pillow's bicubic filter, as in the reference: other bicubic implementations give
    # different pixels.
    resized_height, resized_width = smart_resize(
        height, width, factor=config.factor, min_pixels=config.min_pixels, max_pixels=config.max_pixels
    )
    resized = Image.fromarray(rgb).resize((resized_width, resized_height), resample=Image.Resampling.BICUBIC)
    pixels = np.asarray(resized, dtype=np.uint8)

    # Rescale in float64, then normalize in float32: the reference's order of roundings.
    scaled = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(config.image_mean, dtype=np.float32)
    std = np.asarray(config.image_std, dtype=np.float32)
    normalized = (scaled - mean) / std

    pixel_values, grid_thw = _patchify(normalized.transpose(2, 0, 1), config)
    return ProcessedImage(pixel_values, grid_thw, config.merge_size)


def _as_rgb(image) -> np.ndarray:
    if isinstance(image, ImagePixels):
        return image.pixels
    if isinstance(image, Image.Image):
        return to_rgb_array(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8 (0..255), got {image.dtype}; convert with np.uint8")
        if image.ndim == 2:
            return np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim == 3 and image.shape[2] == 3:
            return image
        raise ValueError(f"image arrays must have shape (H, W, 3) or (H, W), got {image.shape}")
    raise TypeError(f"cannot process a {type(image).__name__}; pass a PIL image, ImagePixels or a uint8 array")


def _patchify(image: np.ndarray, config: ImageProcessingConfig) -> tuple[np.ndarray, np.ndarray]:
    """Cut a (C, H, W) image into rows of (C, T, P, P) patches in merge-block order.

    A still image is repeated `temporal_patch_size` times along time, so it has one
    temporal patch (grid_t = 1). Rows run over merge blocks in raster order, and within a
    block over its merge_size x merge_size patches in raster order.
    """
    channels, height, width = image.shape
    patch, merge, temporal = config.patch_size, config.merge_size, config.temporal_patch_size
    grid_t, grid_h, grid_w = 1, height // patch, width // patch

    frames = np.broadcast_to(image[None], (temporal, channels, height, width))
    blocks = frames.reshape(grid_t, temporal, channels, grid_h // merge, merge, patch, grid_w // merge, merge, patch)

    # Axes: (t, T, C, block_row, row_in_block, y, block_col, col_in_block, x) to
    # (t, block_row, block_col, row_in_block, col_in_block, C, T, y, x).
    blocks = blocks.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = np.ascontiguousarray(blocks.reshape(grid_t * grid_h * grid_w, config.patch_dim), dtype=np.float32)
    return pixel_values, np.array([grid_t, grid_h, grid_w], dtype=np.int64)


def process_example_images(
    example: Example,
    config: ImageProcessingConfig = ImageProcessingConfig(),
    *,
    max_pixels_on_disk: int = DEFAULT_MAX_PIXELS_ON_DISK,
    cache: dict | None = None,
) -> tuple[ProcessedImage, ...]:
    """Load and process every image of `example`, in order.

    `cache`, when given, maps (image reference, config) to its `ProcessedImage`, so that an
    image shared by several examples is decoded and processed once. The caller owns the
    cache and its memory.
    """
    processed = []
    for source in example.images:
        key = (source, config)
        if cache is not None and key in cache:
            processed.append(cache[key])
            continue
        image = process_image(load_image(source, max_pixels_on_disk=max_pixels_on_disk), config)
        if cache is not None:
            cache[key] = image
        processed.append(image)
    return tuple(processed)
