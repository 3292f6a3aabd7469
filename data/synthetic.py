"""Synthetic 48x48 grayscale faces in the seven FER2013 classes.

SYNTHETIC DATA. FER2013 cannot be downloaded on the machines this project is built on, so this
generator stands in for it in tests, demos and drift drills. It is not real data and no figure
measured on it says anything about real faces.

Each face is drawn from facial geometry: the expression sets mouth curvature / opening / width,
brow tilt / height, eye opening, jaw drop and nose wrinkles (after FACS-style prototypes),
blended with neutral by a random intensity so classes overlap. Nuisance variation (pose, position,
scale, lighting, noise, partial occlusion, skin tone, background) makes a CNN learn the geometry,
not the pixels. Shift knobs move the distribution for drift drills.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from moodloop.core.contracts import EMOTIONS, FACE_SIZE, FER2013_CLASS_COUNTS

_CANVAS = 96  # draw at 2x, then downsample: anti-aliased strokes at 48x48

# Expression prototypes: (mouth_curve, mouth_open, mouth_width, brow_tilt, brow_raise,
# eye_open, nose_wrinkle). brow_tilt > 0 lowers the inner ends (anger), < 0 raises them (sadness).
_PROTOTYPES: dict[str, tuple[float, ...]] = {
    "angry": (-0.35, 0.05, 0.80, 1.00, -0.60, 0.70, 0.30),
    "disgust": (-0.55, 0.25, 0.75, 0.55, -0.35, 0.45, 1.00),
    "fear": (-0.25, 0.55, 1.05, -0.75, 0.75, 1.30, 0.00),
    "happy": (1.00, 0.30, 1.10, 0.00, 0.10, 0.60, 0.10),
    "sad": (-0.85, 0.00, 0.80, -1.00, 0.20, 0.60, 0.00),
    "surprise": (0.00, 1.00, 0.60, -0.10, 1.00, 1.40, 0.00),
    "neutral": (0.00, 0.00, 0.90, 0.00, 0.00, 0.90, 0.00),
}


@dataclasses.dataclass(frozen=True)
class Shift:
    """Distribution-shift knobs for drift drills. The defaults give the reference distribution."""

    brightness: float = 0.0  # added to pixel values, in [-1, 1] of the full range
    contrast: float = 1.0  # multiplies deviations from mid-grey
    blur: float = 0.0  # extra Gaussian blur radius in output pixels
    noise: float = 0.0  # extra Gaussian noise std, in [0, 1] of the full range
    face_scale: float = 1.0  # multiplies the face size
    occlusion: float = 0.0  # extra probability of an occluding patch
    class_mix: Mapping[str, float] | None = None  # relative class weights; None = FER2013's


@dataclasses.dataclass(frozen=True)
class Face:
    pixels: np.ndarray  # (48, 48) uint8
    label: int  # index into EMOTIONS
    # The nuisance draws behind the face, in words (NUISANCE_ATTRIBUTES): what the bias audit slices by.
    attributes: Mapping[str, str] = dataclasses.field(default_factory=dict)


# The generator's nuisance attributes, written into synthetic landing batches as extra columns so
# the curated spans carry them and the A/B gate can slice by them. Bucket edges: skin tone is the
# drawn skin grey (50..235); pose is the in-plane tilt (degrees, drawn ~ N(0, 8)); lighting is
# the strength of the light gradient across the face (drawn per axis ~ N(0, 0.12)).
NUISANCE_ATTRIBUTES = ("skin", "pose", "lighting", "occlusion")
_DARK_SKIN, _LIGHT_SKIN = 75.0, 170.0
_TURNED_DEGREES = 10.0
_SIDE_LIGHT = 0.2


def _skin_bucket(skin: float) -> str:
    return "dark" if skin < _DARK_SKIN else ("light" if skin >= _LIGHT_SKIN else "medium")


def class_probabilities(class_mix: Mapping[str, float] | None = None) -> np.ndarray:
    """Class sampling probabilities in EMOTIONS order (FER2013's imbalance by default)."""
    mix = FER2013_CLASS_COUNTS if class_mix is None else class_mix
    unknown = set(mix) - set(EMOTIONS)
    if unknown:
        raise ValueError(f"class_mix names unknown emotions: {sorted(unknown)}")
    weights = np.array([float(mix.get(e, 0.0)) for e in EMOTIONS])
    if weights.sum() <= 0 or (weights < 0).any():
        raise ValueError("class_mix needs non-negative weights with a positive sum")
    return weights / weights.sum()


def _curve_points(x0: float, x1: float, y: float, bend: float, n: int = 12) -> list[tuple[float, float]]:
    """Points of a quadratic curve from (x0, y) to (x1, y) whose middle sits `bend` lower."""
    pts = []
    for i in range(n + 1):
        t = i / n
        pts.append((x0 + (x1 - x0) * t, y + bend * 4 * t * (1 - t)))
    return pts


class _NoDraw:
    def __getattr__(self, _: str):
        return lambda *args, **kwargs: None


class _Masks:
    """Two masks on the canvas, drawn where the face is drawn: `parts` (eyes, brows, mouth) and
    `face` (the oval). When not wanted, drawing on them does nothing."""

    def __init__(self, wanted: bool) -> None:
        self.layers = tuple(Image.new("L", (_CANVAS, _CANVAS), 0) for _ in range(2)) if wanted else ()
        self.parts, self.face = (ImageDraw.Draw(layer) for layer in self.layers) if wanted else (_NoDraw(), _NoDraw())


def _draw_face(
    rng: np.random.Generator,
    label: int,
    shift: Shift,
    attributes: dict[str, str],
    regions: list[Image.Image] | None = None,
) -> Image.Image:
    """The face on the 2x canvas; its nuisance draws go into `attributes`. With `regions` (an
    empty list), also appends two masks on the same canvas, moved by the same pose: the expressive
    parts (eyes, brows, mouth) and the whole face; drawing them takes nothing from `rng`, so the
    face's pixels are the same either way."""
    c = _CANVAS
    bg = rng.uniform(20, 235)
    skin = float(np.clip(bg + rng.choice([-1, 1]) * rng.uniform(35, 110), 50, 235))
    feature_contrast = rng.uniform(80, 140)
    attributes["skin"] = _skin_bucket(skin)
    # Brows, pupils and lips: darker than the skin, except on dark skin, where what reads in a
    # photograph is lighter than the skin (highlights, lips). A model that never saw dark faces
    # has never seen this polarity: the subgroup the bias-audit test leaves out of training.
    dark = skin + 0.8 * feature_contrast if attributes["skin"] == "dark" else max(0.0, skin - feature_contrast)
    img = Image.new("F", (c, c), bg)
    draw = ImageDraw.Draw(img)

    # Background clutter so the face is not the only structure in the frame.
    for _ in range(rng.integers(0, 4)):
        x, y, r = rng.uniform(0, c), rng.uniform(0, c), rng.uniform(5, 25)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=float(rng.uniform(0, 255)))

    # Expression: prototype blended with neutral by intensity, plus per-feature jitter.
    proto = np.array(_PROTOTYPES[EMOTIONS[label]])
    neutral = np.array(_PROTOTYPES["neutral"])
    intensity = rng.uniform(0.45, 1.15)
    curve, mouth_open, mouth_w, brow_tilt, brow_raise, eye_open, wrinkle = (
        neutral + intensity * (proto - neutral) + rng.normal(0, 0.16, size=7)
    )

    cx, cy = c / 2, c / 2 + 2
    fw, fh = rng.uniform(30, 36), rng.uniform(38, 45)
    draw.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin)
    masks = _Masks(regions is not None)
    masks.face.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=255)
    # Hair line
    if rng.random() < 0.7:
        draw.chord([cx - fw, cy - fh - 4, cx + fw, cy + fh * 0.1], 180, 360, fill=float(rng.uniform(0, 255)))
        draw.ellipse([cx - fw * 0.92, cy - fh * 0.62, cx + fw * 0.92, cy + fh], fill=skin)

    # Eyes
    eye_y = cy - fh * 0.18
    eye_dx = fw * 0.42
    eye_w = fw * 0.2
    eye_h = max(0.8, 4.2 * eye_open)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse([ex - eye_w, eye_y - eye_h, ex + eye_w, eye_y + eye_h], fill=255.0 * 0.3 + skin * 0.7)
        pr = min(eye_h, eye_w * 0.5)
        draw.ellipse([ex - pr, eye_y - pr, ex + pr, eye_y + pr], fill=dark)
        masks.parts.ellipse([ex - eye_w, eye_y - eye_h, ex + eye_w, eye_y + eye_h], fill=255)

    # Brows: inner end moves down with tilt, whole brow moves up with raise.
    brow_y = eye_y - 9 - 6 * brow_raise
    for side in (-1, 1):
        inner = (cx + side * eye_dx * 0.35, brow_y + 5 * brow_tilt)
        outer = (cx + side * eye_dx * 1.55, brow_y - 1.5 * brow_tilt)
        brow_width = int(rng.integers(3, 6))
        draw.line([inner, outer], fill=dark, width=brow_width)
        masks.parts.line([inner, outer], fill=255, width=brow_width)

    # Nose and disgust wrinkles
    nose_y = cy + fh * 0.12
    draw.line([(cx, eye_y + 2), (cx - 2, nose_y), (cx + 3, nose_y + 1)], fill=dark * 0.5 + skin * 0.5, width=2)
    if wrinkle > 0.35:
        for side in (-1, 1):
            for k in range(int(1 + 2 * min(wrinkle, 1.2))):
                x = cx + side * (4 + 2 * k)
                draw.line([(x, nose_y - 10 + 2 * k), (x + side * 3, nose_y - 4 + 2 * k)], fill=dark, width=1)

    # Mouth: upper and lower lip curves; curve > 0 is a smile (corners up).
    mouth_y = cy + fh * 0.5 + 4 * max(mouth_open, 0) * 0.5
    half_w = fw * 0.38 * float(np.clip(mouth_w, 0.35, 1.5))
    gap = 9 * max(mouth_open, 0.0)
    bend = 7 * curve
    upper = _curve_points(cx - half_w, cx + half_w, mouth_y - bend * 0.5, bend - gap * 0.3)
    lower = _curve_points(cx + half_w, cx - half_w, mouth_y - bend * 0.5, bend + gap)
    if gap > 1.5:
        draw.polygon(upper + lower, fill=dark * 0.6)
    draw.line(upper, fill=dark, width=3)
    if gap > 1.5:
        draw.line(lower, fill=dark, width=2)
    masks.parts.polygon(upper + lower, fill=255)
    masks.parts.line(upper + lower[:1], fill=255, width=3)
    # Jaw drop widens the chin for open mouths.
    if mouth_open > 0.5:
        chin = [cx - fw * 0.5, cy + fh * 0.55, cx + fw * 0.5, cy + fh * 1.05]
        draw.arc(chin, 20, 160, fill=dark * 0.3 + skin * 0.7, width=2)

    # Pose, position, scale
    angle = rng.normal(0, 8)
    attributes["pose"] = "turned" if abs(angle) >= _TURNED_DEGREES else "frontal"
    scale = rng.uniform(0.85, 1.15) * shift.face_scale
    tx, ty = rng.normal(0, 3.5, size=2)
    a = 1 / scale
    moved = abs(scale - 1) > 1e-3 or abs(tx) + abs(ty) > 0

    def pose(layer: Image.Image, fill: float) -> Image.Image:
        layer = layer.rotate(angle, resample=Image.BILINEAR, fillcolor=fill)
        if moved:
            affine = (a, 0, cx - a * cx - tx, 0, a, cy - a * cy - ty)
            layer = layer.transform((c, c), Image.AFFINE, affine, resample=Image.BILINEAR, fillcolor=fill)
        return layer

    img = pose(img, bg)
    if regions is not None:
        regions.extend(pose(layer, 0) for layer in masks.layers)

    # Partial occlusion: a hand or an object over part of the face.
    occluded = rng.random() < 0.12 + shift.occlusion
    attributes["occlusion"] = "occluded" if occluded else "none"
    if occluded:
        draw = ImageDraw.Draw(img)
        ow, oh = rng.uniform(12, 34), rng.uniform(10, 30)
        ox, oy = rng.uniform(10, c - 10), rng.uniform(10, c - 10)
        draw.rectangle([ox - ow / 2, oy - oh / 2, ox + ow / 2, oy + oh / 2], fill=float(rng.uniform(0, 255)))
    return img


def _finish(img: Image.Image, rng: np.random.Generator, shift: Shift, attributes: dict[str, str]) -> np.ndarray:
    # Mode "F" has no blur filter: blur the 8-bit 2x canvas (radius doubled to match).
    blur = rng.uniform(0, 0.6) + shift.blur
    canvas = img.convert("L")
    if blur > 0.05:
        canvas = canvas.filter(ImageFilter.GaussianBlur(2 * blur))
    small = canvas.resize((FACE_SIZE, FACE_SIZE), Image.BILINEAR)
    x = np.asarray(small, dtype=np.float32) / 255.0
    # Lighting: a linear gradient across the face, then global brightness/contrast.
    gx, gy = rng.normal(0, 0.12, size=2)
    attributes["lighting"] = "side" if float(np.hypot(gx, gy)) >= _SIDE_LIGHT else "even"
    ramp = np.linspace(-0.5, 0.5, FACE_SIZE, dtype=np.float32)
    x = x + gx * ramp[None, :] + gy * ramp[:, None]
    x = (x - 0.5) * rng.uniform(0.75, 1.25) * shift.contrast + 0.5 + rng.normal(0, 0.06) + shift.brightness
    x = x + rng.normal(0, rng.uniform(0.0, 0.05) + shift.noise, size=x.shape)
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def generate(n: int, seed: int = 0, shift: Shift = Shift()) -> Iterator[Face]:
    """Yield `n` synthetic faces, deterministic for a given seed and shift."""
    rng = np.random.default_rng(seed)
    probs = class_probabilities(shift.class_mix)
    labels = rng.choice(len(EMOTIONS), size=n, p=probs)
    for label in labels:
        attributes: dict[str, str] = {}
        img = _draw_face(rng, int(label), shift, attributes)
        yield Face(pixels=_finish(img, rng, shift, attributes), label=int(label), attributes=attributes)


def generate_arrays(n: int, seed: int = 0, shift: Shift = Shift()) -> tuple[np.ndarray, np.ndarray]:
    """(pixels [n, 48, 48] uint8, labels [n] int64) for in-memory use (tests, benchmarks)."""
    return _stack(list(generate(n, seed, shift)))


def _stack(faces: list[Face]) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.stack([f.pixels for f in faces]) if faces else np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8)
    return pixels, np.array([f.label for f in faces], dtype=np.int64)


def generate_with_attributes(
    n: int, seed: int = 0, shift: Shift = Shift()
) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """`generate_arrays`'s faces (the same pixels for the same seed) with each face's nuisance
    attributes (NUISANCE_ATTRIBUTES): what a synthetic landing batch carries as extra columns."""
    faces = list(generate(n, seed, shift))
    pixels, labels = _stack(faces)
    return pixels, labels, [dict(f.attributes) for f in faces]


def generate_with_regions(n: int, seed: int = 0, shift: Shift = Shift()) -> tuple[np.ndarray, ...]:
    """`generate_arrays`'s faces (the same pixels for the same seed) with where the generator drew
    them: (pixels, labels, expressive [n, 48, 48] bool: eyes, brows and mouth, face [n, 48, 48]
    bool: the face oval). For testing what a model looks at (the explanation heatmaps)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(EMOTIONS), size=n, p=class_probabilities(shift.class_mix))
    pixels, expressive, face = [], [], []
    for label in labels:
        regions: list[Image.Image] = []
        attributes: dict[str, str] = {}
        img = _draw_face(rng, int(label), shift, attributes, regions)
        pixels.append(_finish(img, rng, shift, attributes))
        for masks, region in zip((expressive, face), regions, strict=True):
            masks.append(np.asarray(region.resize((FACE_SIZE, FACE_SIZE), Image.BILINEAR)) >= 128)
    return np.stack(pixels), labels.astype(np.int64), np.stack(expressive), np.stack(face)


def contact_sheet(pixels: np.ndarray, labels: np.ndarray, per_class: int = 8) -> Image.Image:
    """One row per emotion, `per_class` faces each: for eyeballing the generator."""
    rows = []
    for k in range(len(EMOTIONS)):
        idx = np.flatnonzero(labels == k)[:per_class]
        row = np.zeros((FACE_SIZE, FACE_SIZE * per_class), np.uint8)
        for j, i in enumerate(idx):
            row[:, j * FACE_SIZE : (j + 1) * FACE_SIZE] = pixels[i]
        rows.append(row)
    return Image.fromarray(np.concatenate(rows)).resize(
        (FACE_SIZE * per_class * 2, FACE_SIZE * len(EMOTIONS) * 2), Image.NEAREST
    )
