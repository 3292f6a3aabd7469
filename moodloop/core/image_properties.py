"""What describes a face image for drift monitoring (the inference-log contract's image properties), defined once:
the gateway computes them for live requests, the A/B gate for the reference profile of each model,
so both sides of a drift report measure exactly the same thing."""

from __future__ import annotations

import numpy as np
from PIL import Image

from moodloop.core import encoded_images
from moodloop.core.contracts import FACE_SIZE


def image_properties(pixels: np.ndarray) -> dict[str, float]:
    """Brightness, contrast and sharpness of a grey image (any size), on the 48x48 face the model sees."""
    grey = np.asarray(pixels, dtype=np.float32)
    if grey.shape != (FACE_SIZE, FACE_SIZE):
        grey = np.asarray(Image.fromarray(grey.astype(np.uint8)).resize((FACE_SIZE, FACE_SIZE)), dtype=np.float32)
    laplacian = -4 * grey[1:-1, 1:-1] + grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]
    return {
        "brightness": float(grey.mean() / 255.0),
        "contrast": float(grey.std() / 255.0),
        "sharpness": float(laplacian.var()),
    }


# Buckets for slicing (the bias audit): fixed edges, so a bucket means the same in every span.
# brightness and contrast are the mean and the standard deviation of the 48x48 face in 0..1;
# sharpness is the variance of its Laplacian (grey levels squared); face_size is the shorter side
# of the image the face came from (FER2013's own faces are 48 px).
PROPERTY_BUCKETS: dict[str, tuple[tuple[float, str], ...]] = {
    "brightness": ((0.35, "dim"), (0.65, "normal"), (float("inf"), "bright")),
    "contrast": ((0.12, "low"), (0.25, "normal"), (float("inf"), "high")),
    "sharpness": ((300.0, "blurry"), (2000.0, "normal"), (float("inf"), "sharp")),
    "face_size": ((48, "small"), (96, "medium"), (float("inf"), "large")),
}
PROPERTY_ATTRIBUTES = tuple(PROPERTY_BUCKETS)


def _bucket(attribute: str, value: float) -> str:
    return next(name for upper, name in PROPERTY_BUCKETS[attribute] if value < upper)


def property_buckets(pixels: np.ndarray, source_side: int | None = None) -> dict[str, str]:
    """The face's image-property slices: {"brightness": "dim", ...}; face_size only when the
    size of the source image is known."""
    measured = image_properties(pixels)
    buckets = {key: _bucket(key, measured[key]) for key in ("brightness", "contrast", "sharpness")}
    if source_side is not None:
        buckets["face_size"] = _bucket("face_size", source_side)
    return buckets


def decode_grey(encoded: bytes) -> np.ndarray | None:
    """Encoded image -> grey pixels, as every door decodes them (moodloop/core/encoded_images.py); None
    when it is not a readable image (a request the model rejected may hold anything)."""
    try:
        return encoded_images.decode_grey(encoded)
    except encoded_images.ImageRefused:
        return None
