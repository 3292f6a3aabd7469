"""Readers for the layouts FER2013 users have (the landing-batch contract in moodloop/core/contracts.py).

- `fer2013.csv`: columns `emotion,pixels[,Usage]`, pixels = 2304 space-separated 0..255 values.
- Image folders: `<emotion>/*.png|jpg` or `train|test|.../<emotion>/*`, any size, grey or colour.
- Images with a labels file: `labels.csv` with columns `file,label` (label = name or 0..6).

Any further column of fer2013.csv or labels.csv (for example `group`) is a slice attribute of
its faces (moodloop/core/slices.py): the bias audit in the A/B gate reports and guards each value.

Every bad row or file is reported by row number or file name with the reason; good rows are
kept. Nothing is dropped silently: read = kept + rejected, always.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from moodloop.core import encoded_images, slices
from moodloop.core.contracts import EMOTIONS, FACE_SIZE, READY_MARKER, emotion_index

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
LABELS_FILE = "labels.csv"
FER_PIXELS = FACE_SIZE * FACE_SIZE

# FER2013 rows hold ~9 KB of text; a field limit well above that still stops a runaway row.
csv.field_size_limit(1 << 20)


@dataclasses.dataclass(frozen=True)
class Face:
    pixels: np.ndarray  # (48, 48) uint8
    label: int  # index into EMOTIONS
    source: str  # "fer2013.csv:row 17" or a path relative to the batch
    usage: str = ""  # FER2013 Usage column or the split folder name, if any
    attributes: dict[str, str] = dataclasses.field(default_factory=dict)  # the batch's extra columns
    source_side: int = FACE_SIZE  # the shorter side of the image the face came from, in pixels


class ReadError(ValueError):
    """A row or file that cannot become a face; `kind` groups reasons for the data contract."""

    kind = "layout"  # wrong header, columns, folder, file type, missing file


class LabelError(ReadError):
    kind = "label"


class PixelError(ReadError):
    kind = "pixels"


class ImageError(ReadError):
    kind = "unreadable"


class SizeLimitError(ReadError):
    kind = "too_large"


REJECTION_KINDS = ("layout", "label", "pixels", "unreadable", "too_large")


@dataclasses.dataclass(frozen=True)
class Rejected:
    source: str
    reason: str
    kind: str = "layout"  # one of REJECTION_KINDS

    @classmethod
    def from_error(cls, source: str, exc: ValueError) -> Rejected:
        return cls(source, str(exc), getattr(exc, "kind", "layout"))


@dataclasses.dataclass
class ReadResult:
    faces: list[Face] = dataclasses.field(default_factory=list)
    rejected: list[Rejected] = dataclasses.field(default_factory=list)

    @property
    def read(self) -> int:
        return len(self.faces) + len(self.rejected)

    def summary(self) -> str:
        return f"read {self.read}, kept {len(self.faces)}, rejected {len(self.rejected)}"

    def report(self, limit: int | None = None) -> str:
        """Human-readable report: the counts, per-class counts, then one line per rejection."""
        counts = np.bincount([f.label for f in self.faces], minlength=len(EMOTIONS))
        per_class = ", ".join(f"{e} {c}" for e, c in zip(EMOTIONS, counts, strict=True))
        lines = [self.summary(), f"kept per class: {per_class}"]
        shown = self.rejected if limit is None else self.rejected[:limit]
        lines += [f"rejected {r.source}: {r.reason}" for r in shown]
        if len(shown) < len(self.rejected):
            lines.append(f"... and {len(self.rejected) - len(shown)} more rejections")
        return "\n".join(lines)

    def extend(self, other: ReadResult) -> None:
        self.faces.extend(other.faces)
        self.rejected.extend(other.rejected)


def decode_face_and_side(data: bytes, max_pixels: int = 40_000_000) -> tuple[np.ndarray, int]:
    """Decode an encoded image (any size, grey or colour) to a 48x48 uint8 face, and the shorter
    side of the image as it was. What is accepted and refused, and the reasons, are the gateway's
    too (moodloop/core/encoded_images.py): the size is checked from the header before pixels are decoded."""
    try:
        image = encoded_images.open_image(data, max_pixels)
        side = min(image.size)
        grey = encoded_images.grey_pixels(image)
    except encoded_images.ImageRefused as refused:
        raise (SizeLimitError if refused.kind == "too_large" else ImageError)(str(refused)) from None
    if grey.shape != (FACE_SIZE, FACE_SIZE):
        grey = np.asarray(Image.fromarray(grey).resize((FACE_SIZE, FACE_SIZE), Image.BILINEAR), dtype=np.uint8)
    return grey, side


def parse_label(value: str | int) -> int:
    try:
        return emotion_index(value)
    except ValueError as exc:
        raise LabelError(str(exc)) from None


def parse_fer_pixels(text: str) -> np.ndarray:
    """Parse FER2013's space-separated pixel string; ValueError names what is wrong."""
    parts = text.split()
    if len(parts) != FER_PIXELS:
        raise PixelError(f"expected {FER_PIXELS} pixel values, got {len(parts)}")
    try:
        values = np.array([int(p) for p in parts], dtype=np.int64)
    except ValueError:
        bad = next(p for p in parts if not p.lstrip("-").isdigit())
        raise PixelError(f"non-numeric pixel value {bad[:20]!r}") from None
    if values.min() < 0 or values.max() > 255:
        raise PixelError(f"pixel values must be 0..255, got {values.min()}..{values.max()}")
    return values.astype(np.uint8).reshape(FACE_SIZE, FACE_SIZE)


def _attribute_columns(header: list[str], taken: set[int]) -> dict[int, str]:
    """Column index -> slice attribute, for every column the layout does not use itself.
    ValueError (a layout error of the whole file) for a name that cannot be an attribute."""
    columns: dict[int, str] = {}
    for i, column in enumerate(header):
        if i in taken:
            continue
        attribute = slices.attribute_name(column)
        if attribute in columns.values():
            raise ValueError(f"two columns name the slice attribute {attribute!r}")
        columns[i] = attribute
    return columns


def _row_attributes(row: list[str], columns: dict[int, str]) -> dict[str, str]:
    values = {attribute: slices.attribute_value(row[i]) if i < len(row) else "" for i, attribute in columns.items()}
    return {attribute: value for attribute, value in values.items() if value}


def read_fer2013_csv(path: Path, name: str | None = None) -> ReadResult:
    """Read a FER2013 CSV; rows are numbered as a spreadsheet shows them (header = row 1)."""
    name = name or path.name
    result = ReadResult()
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            result.rejected.append(Rejected(name, "empty file"))
            return result
        columns = [h.strip().lower() for h in header]
        if "emotion" not in columns or "pixels" not in columns:
            result.rejected.append(Rejected(f"{name}:row 1", f"header must name emotion and pixels, got {header}"))
            return result
        i_label, i_pixels = columns.index("emotion"), columns.index("pixels")
        i_usage = columns.index("usage") if "usage" in columns else None
        try:
            attribute_columns = _attribute_columns(header, {i_label, i_pixels, i_usage} - {None})
        except ValueError as exc:
            result.rejected.append(Rejected(f"{name}:row 1", str(exc)))
            return result
        for row_number, row in enumerate(reader, start=2):
            source = f"{name}:row {row_number}"
            if not row or all(not cell.strip() for cell in row):
                continue  # blank lines carry no face; not counted as read
            try:
                if len(row) < len(columns):
                    raise ReadError(f"expected {len(columns)} columns, got {len(row)}")
                label = parse_label(row[i_label])
                pixels = parse_fer_pixels(row[i_pixels])
                attributes = _row_attributes(row, attribute_columns)
            except ValueError as exc:
                result.rejected.append(Rejected.from_error(source, exc))
                continue
            usage = row[i_usage].strip() if i_usage is not None and i_usage < len(row) else ""
            result.faces.append(Face(pixels, label, source, usage, attributes))
    return result


def _read_image_file(
    path: Path,
    source: str,
    label: int,
    usage: str,
    max_bytes: int,
    max_pixels: int,
    attributes: dict[str, str] | None = None,
) -> Face:
    size = path.stat().st_size
    if size > max_bytes:
        raise SizeLimitError(f"file is {size} bytes, over the {max_bytes}-byte limit")
    pixels, side = decode_face_and_side(path.read_bytes(), max_pixels)
    return Face(pixels, label, source, usage, attributes or {}, side)


def read_labelled_images(root: Path, max_bytes: int = 10 << 20, max_pixels: int = 40_000_000) -> ReadResult:
    """Read `labels.csv` (file,label[,attribute...]) and the images it names, relative to `root`."""
    result = ReadResult()
    labels_path = root / LABELS_FILE
    with open(labels_path, newline="", encoding="utf-8", errors="replace") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        result.rejected.append(Rejected(LABELS_FILE, "empty file"))
        return result
    header = [h.strip().lower() for h in rows[0]]
    if header[:2] != ["file", "label"]:
        result.rejected.append(Rejected(f"{LABELS_FILE}:row 1", f"header must be file,label; got {rows[0]}"))
        return result
    try:
        attribute_columns = _attribute_columns(rows[0], {0, 1})
    except ValueError as exc:
        result.rejected.append(Rejected(f"{LABELS_FILE}:row 1", str(exc)))
        return result
    for row_number, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        source = f"{LABELS_FILE}:row {row_number}"
        try:
            if len(row) < 2:
                raise ReadError("expected file,label")
            rel = row[0].strip()
            path = (root / rel).resolve()
            if root.resolve() not in path.parents:
                raise ReadError(f"{rel!r} is outside the batch folder")
            source = rel
            label = parse_label(row[1])
            attributes = _row_attributes(row, attribute_columns)
            if not path.is_file():
                raise ReadError("file not found")
            result.faces.append(_read_image_file(path, rel, label, "", max_bytes, max_pixels, attributes))
        except ValueError as exc:
            result.rejected.append(Rejected.from_error(source, exc))
    return result


def read_image_folders(root: Path, max_bytes: int = 10 << 20, max_pixels: int = 40_000_000) -> ReadResult:
    """Read `<emotion>/*` or `<split>/<emotion>/*` image trees; the folder name is the label."""
    result = ReadResult()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != READY_MARKER):
        rel = path.relative_to(root)
        if path.suffix.lower() not in IMAGE_SUFFIXES or rel.name.startswith("."):
            if path.suffix.lower() not in {".csv", ".json", ".md", ".txt"} and not rel.name.startswith("."):
                result.rejected.append(
                    Rejected(str(rel), f"not an image file ({path.suffix or 'no suffix'})", "unreadable")
                )
            continue
        parts = rel.parts[:-1]
        try:
            if not parts:
                raise LabelError("image is not inside an <emotion>/ folder")
            label = parse_label(parts[-1])
            usage = parts[-2] if len(parts) >= 2 else ""
            result.faces.append(_read_image_file(path, str(rel), label, usage, max_bytes, max_pixels))
        except ValueError as exc:
            result.rejected.append(Rejected.from_error(str(rel), exc))
    return result


def detect_layout(path: Path) -> str:
    """'fer2013-csv', 'labels-csv' or 'image-folders' for a landing batch path."""
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "fer2013-csv"
        raise ValueError(f"{path} is a file but not a .csv; expected a FER2013 CSV or a folder")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    if (path / LABELS_FILE).is_file():
        return "labels-csv"
    if list(path.glob("*.csv")):
        return "fer2013-csv"
    return "image-folders"


def read_batch(path: Path, max_bytes: int = 10 << 20, max_pixels: int = 40_000_000) -> ReadResult:
    """Read a landing batch in any supported layout."""
    path = Path(path)
    layout = detect_layout(path)
    if layout == "labels-csv":
        return read_labelled_images(path, max_bytes, max_pixels)
    if layout == "image-folders":
        return read_image_folders(path, max_bytes, max_pixels)
    csv_files: Iterable[Path] = [path] if path.is_file() else sorted(path.glob("*.csv"))
    result = ReadResult()
    for csv_path in csv_files:
        result.extend(read_fer2013_csv(csv_path))
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m data.readers BATCH`: print the read report of a landing batch."""

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batch", type=Path, help="a FER2013 CSV, an image folder tree, or a folder with labels.csv")
    args = parser.parse_args(argv)
    result = read_batch(args.batch)
    print(result.report())
    return 0 if result.faces else 1


if __name__ == "__main__":
    sys.exit(main())
