"""Encoded images in, grey pixels out: what every door of moodloop accepts and refuses, defined
once, with the same messages (the training readers, the gateway's predict paths, photo analysis).

- Accepted formats: PNG, JPEG, GIF, BMP, WEBP, TIFF; any mode: grey, RGB, palette, alpha (dropped),
  CMYK, 16-bit (scaled to 8 bits, not clipped).
- The declared pixel count is read from the header and checked before a pixel is decoded, so a
  small file declaring 20000x20000 pixels (a decompression bomb) costs microseconds, not seconds.
- The model decodes images in its graph (tf.io.decode_image): PNG of any mode and 8-bit grey or
  RGB JPEG it reads as PIL does; `model_ready` hands those over untouched and turns the rest
  (CMYK JPEG, GIF, BMP, WEBP, TIFF, which TensorFlow refuses or reads otherwise) into a grey PNG.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageRefused(ValueError):
    """An encoded image moodloop does not decode; `kind` is "unreadable" or "too_large"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def open_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """The image with its header read and checked (format, declared size); no pixel decoded yet.
    `max_pixels` None: the size was checked on the way in (PIL's own bomb guard still holds)."""
    if not data:
        raise ImageRefused("unreadable", "empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # PIL's own guard fires first for the largest declarations; say it in moodloop's words
        declared = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{declared.group(1)} pixels" if declared else "too many pixels"
        raise ImageRefused("too_large", f"image is {size}; the limit is {max_pixels}") from None
    except UnidentifiedImageError:
        raise ImageRefused("unreadable", "not a readable image (not a known image format)") from None
    except Exception as error:  # noqa: BLE001 - a broken header: PIL raises OSError, SyntaxError, ValueError ...
        raise ImageRefused("unreadable", f"not a readable image ({type(error).__name__}: {error})") from None
    if image.format not in FORMATS:
        raise ImageRefused("unreadable", f"{image.format} images are not accepted; send {', '.join(FORMATS)}")
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageRefused(
            "too_large", f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    return image


def _sixteen_to_eight_bits(image: Image.Image, rows: int = 256) -> np.ndarray:
    """round(v / 257) in integers, a block of rows at a time, each block read from PIL's own buffer:
    beside that buffer and the result only a few MB are spent, where float64 arithmetic on the
    whole image took 32 bytes a pixel (a 78 KB PNG of 6324x6324 16-bit pixels peaked near 1 GB).
    PIL's "I" mode is int32: clipped to 16 bits first."""
    width, height = image.size
    grey = np.empty((height, width), np.uint8)
    for top in range(0, height, rows):
        block = np.asarray(image.crop((0, top, width, min(height, top + rows))))
        grey[top : top + rows] = (np.clip(block, 0, 65535).astype(np.uint32) + 128) // 257  # v / 257 is never k + 0.5
    return grey


def _decoded(image: Image.Image, mode: str) -> np.ndarray:
    """Decode an opened image to uint8 pixels in `mode` ("L" grey, "RGB") at its own size."""
    try:
        image.load()
        if image.mode in _SIXTEEN_BIT:  # PIL's convert clips 16-bit values at 255: scale them instead
            grey = _sixteen_to_eight_bits(image)
            return grey if mode == "L" else np.repeat(grey[..., None], 3, axis=2)
        return np.asarray(image.convert(mode), dtype=np.uint8)
    except Exception as error:  # noqa: BLE001 - truncated data fails here (OSError, ValueError, ...), not at open
        raise ImageRefused("unreadable", f"truncated or corrupt image ({type(error).__name__}: {error})") from None


def grey_pixels(image: Image.Image) -> np.ndarray:
    """Decode an opened image to grey uint8 pixels [H, W] (faces for the readers and the model)."""
    return _decoded(image, "L")


def rgb_pixels(image: Image.Image) -> np.ndarray:
    """Decode an opened image to RGB uint8 pixels [H, W, 3] (photos, for the face detectors)."""
    return _decoded(image, "RGB")


def decode_grey(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    return grey_pixels(open_image(data, max_pixels))


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def model_ready(data: bytes, max_pixels: int) -> bytes:
    """Bytes the model's in-graph decoder reads as the readers do: checked, and untouched when it
    can read them (PNG; grey or RGB JPEG), else decoded here and sent on as a grey PNG."""
    image = open_image(data, max_pixels)
    if image.format == "PNG" or (image.format == "JPEG" and image.mode in ("L", "RGB")):
        return data
    return encode_png(grey_pixels(image))
