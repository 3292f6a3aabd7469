"""What describes a face image for drift monitoring (the inference-log contract's image properties), defined once:
the gateway computes them for live requests, the A/B gate for the reference profile of each model,
so both sides of a drift report measure exactly the same thing."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from moodloop.contracts import FACE_SIZE


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


def decode_grey(encoded: bytes) -> np.ndarray | None:
    """Encoded image -> grey pixels; None when it is not a readable image."""
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            return np.asarray(image.convert("L"))
    except Exception:  # noqa: BLE001 - a request the model rejected may hold anything
        return None
