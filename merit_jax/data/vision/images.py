"""Image references for `Example.images`, and loading them safely into RGB arrays.

A file is opened lazily: Pillow reads only the header, the pixel count is checked against
`max_pixels_on_disk`, and only then are the pixels decoded, so a decompression bomb is
rejected before it can allocate memory.
"""

import contextlib
import dataclasses
import hashlib
import io
import os
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

# Pillow's own default for `Image.MAX_IMAGE_PIXELS` (Pillow 13): about 89.5 million pixels,
# or 256 MiB at 3 bytes per pixel.
DEFAULT_MAX_PIXELS_ON_DISK = 1024 * 1024 * 1024 // 4 // 3

# Formats that Pillow may identify. Restricting them keeps rarely used decoders away from
# user files.
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")

# 8-bit modes that convert to RGB without losing meaning. 16- and 32-bit modes ("I;16", "I",
# "F") would be clipped to 0..255 by `Image.convert`, so they are rejected.
SUPPORTED_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")


class ImageError(ValueError):
    """An image that cannot be used; the message names the record, the image and the fix."""


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """An image file on disk. `origin` is the record that refers to it, for error messages."""

    path: str
    origin: str = dataclasses.field(default="", compare=False)

    def __post_init__(self):
        if not isinstance(self.path, str) or not self.path:
            raise TypeError(f"ImageFile.path must be a non-empty str, got {self.path!r}")


class ImagePixels:
    """An in-memory RGB image: a read-only uint8 array of shape (H, W, 3).

    Equality and hash follow the pixel content, so that examples carrying images stay
    comparable and hashable like text-only ones. `origin` is for error messages only.
    """

    __slots__ = ("pixels", "origin", "_digest")

    def __init__(self, pixels: np.ndarray, origin: str = ""):
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
            raise ValueError(
                f"ImagePixels{f' ({origin})' if origin else ''} needs a non-empty uint8 array of "
                f"shape (H, W, 3), got {pixels.dtype} {pixels.shape}; convert the image to 8-bit RGB"
            )
        pixels = pixels.copy()
        pixels.flags.writeable = False
        self.pixels = pixels
        self.origin = origin
        self._digest = hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).digest()

    def __eq__(self, other):
        if not isinstance(other, ImagePixels):
            return NotImplemented
        return self._digest == other._digest

    def __hash__(self):
        return hash(self._digest)

    def __repr__(self):
        height, width, _ = self.pixels.shape
        return f"ImagePixels({width}x{height}{f', {self.origin!r}' if self.origin else ''})"


def read_image_size(source, *, origin: str = "") -> tuple[int, int]:
    """Return (width, height) of `source` from the image header, without decoding pixels.

    `source` is an `ImageFile`, an `ImagePixels`, a path or the encoded bytes of a file.
    """
    if isinstance(source, ImagePixels):
        height, width, _ = source.pixels.shape
        return width, height

    where = _where(source, origin)
    with _open_header(source, _label(source), where) as image:
        return image.size


def load_image(source, *, max_pixels_on_disk: int = DEFAULT_MAX_PIXELS_ON_DISK, origin: str = "") -> np.ndarray:
    """Decode `source` into an RGB uint8 array of shape (H, W, 3).

    `source` is as for `read_image_size`. The size is checked before decoding, and an image
    of more than `max_pixels_on_disk` pixels raises `ImageError`. Transparent pixels are
    composited onto white, as `transformers`' image processors do before dropping alpha.
    Only the first frame of an animated file is used.

    NOTE: Pillow's own check also applies. An image above twice `Image.MAX_IMAGE_PIXELS`
    raises `ImageError` even when `max_pixels_on_disk` is higher.
    """
    if isinstance(max_pixels_on_disk, bool) or not isinstance(max_pixels_on_disk, int) or max_pixels_on_disk < 1:
        raise ValueError(f"max_pixels_on_disk must be a positive integer, got {max_pixels_on_disk!r}")
    if isinstance(source, ImagePixels):
        return source.pixels

    label = _label(source)
    where = _where(source, origin)
    with _open_header(source, label, where) as image:
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageError(f"{where}image {label} has an empty size {width}x{height}; replace the file")
        if width * height > max_pixels_on_disk:
            raise ImageError(
                f"{where}image {label} is {width}x{height} = {width * height:,} pixels, above "
                f"max_pixels_on_disk={max_pixels_on_disk:,}; downscale the file, or raise "
                "max_pixels_on_disk if you trust it"
            )
        if image.mode not in SUPPORTED_MODES:
            raise ImageError(
                f"{where}image {label} has pixel mode {image.mode!r}, which does not convert to 8-bit "
                f"RGB without loss; save it as 8-bit RGB or grayscale (modes {', '.join(SUPPORTED_MODES)})"
            )

        try:
            image.load()
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
            raise ImageError(
                f"{where}image {label} could not be decoded ({type(error).__name__}: {error}); "
                "the file is corrupt or truncated, so replace it or drop the record"
            ) from None
        return to_rgb_array(image)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert a decoded Pillow image to RGB uint8 (H, W, 3), compositing alpha onto white."""
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert("RGB")
    else:
        rgb = image.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8)


def _where(source, origin: str) -> str:
    """Prefix for messages: the record that refers to the image, if known."""
    origin = origin or getattr(source, "origin", "")
    return f"{origin}: " if origin else ""


def _label(source) -> str:
    """Name `source` in messages: its path, or the size of the encoded bytes."""
    if isinstance(source, ImageFile):
        return source.path
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    raise TypeError(
        f"cannot load an image from a {type(source).__name__}; pass an ImageFile, ImagePixels, path or bytes"
    )


@contextlib.contextmanager
def _open_header(source, label: str, where: str) -> Iterator[Image.Image]:
    """Open `source` with Pillow, which reads the header only; close the file on exit."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        handle = io.BytesIO(bytes(source))
    else:
        path = source.path if isinstance(source, ImageFile) else os.fspath(source)
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            raise ImageError(f"{where}image file {label} not found; check the path and the image root") from None
        except OSError as error:
            raise ImageError(f"{where}image file {label} cannot be opened ({error}); check the file") from None

    with handle:
        try:
            # The caller's own size check replaces Pillow's warning between MAX_IMAGE_PIXELS
            # and twice that.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(handle, formats=ALLOWED_FORMATS)
        except Image.DecompressionBombError as error:
            raise ImageError(
                f"{where}image {label} was rejected from its header as a decompression bomb ({error}); "
                "downscale the file"
            ) from None
        except UnidentifiedImageError:
            raise ImageError(
                f"{where}image {label} is not a readable image in one of the formats "
                f"{', '.join(ALLOWED_FORMATS)}; convert it to PNG or JPEG"
            ) from None
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise ImageError(
                f"{where}image {label} has an unreadable header ({type(error).__name__}: {error}); replace the file"
            ) from None

        with image:
            yield image
