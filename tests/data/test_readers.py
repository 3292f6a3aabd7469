"""Readers: every bad row or file is named with its reason, good rows are kept, nothing is lost."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import landing, readers, synthetic
from moodloop.core.contracts import EMOTIONS, emotion_index


def test_mixed_fer2013_csv_names_each_bad_row_and_keeps_the_good_ones(mixed_csv):
    result = readers.read_batch(mixed_csv)
    assert (result.read, len(result.faces), len(result.rejected)) == (14, 8, 6)
    reasons = {r.source: r.reason for r in result.rejected}
    assert reasons == {
        "fer2013_mixed.csv:row 5": "expected 2304 pixel values, got 2000",
        "fer2013_mixed.csv:row 6": "non-numeric pixel value 'abc'",
        "fer2013_mixed.csv:row 7": reasons["fer2013_mixed.csv:row 7"],
        "fer2013_mixed.csv:row 11": reasons["fer2013_mixed.csv:row 11"],
        "fer2013_mixed.csv:row 12": "pixel values must be 0..255, got 128..300",
        "fer2013_mixed.csv:row 13": "expected 3 columns, got 1",
    }
    assert "not an emotion" in reasons["fer2013_mixed.csv:row 7"]
    assert "'happy?'" in reasons["fer2013_mixed.csv:row 11"]
    assert all(f.pixels.shape == (48, 48) and f.pixels.dtype == np.uint8 for f in result.faces)
    report = result.report()
    assert report.startswith("read 14, kept 8, rejected 6")
    assert "rejected fer2013_mixed.csv:row 12" in report


def test_csv_round_trip_keeps_pixels_labels_and_usage(tmp_path: Path):
    pixels, labels = synthetic.generate_arrays(20, seed=5)
    landing.write_fer2013_csv(zip(pixels, labels, strict=True), tmp_path / "fer2013.csv", usage="PublicTest")
    result = readers.read_batch(tmp_path)
    assert not result.rejected
    np.testing.assert_array_equal(np.stack([f.pixels for f in result.faces]), pixels)
    assert [f.label for f in result.faces] == labels.tolist()
    assert {f.usage for f in result.faces} == {"PublicTest"}


def test_csv_with_wrong_header_is_rejected_whole(tmp_path: Path):
    (tmp_path / "faces.csv").write_text("label,image\n3,1 2 3\n")
    result = readers.read_batch(tmp_path / "faces.csv")
    assert not result.faces
    assert "header must name emotion and pixels" in result.rejected[0].reason


def _png(array: np.ndarray, mode: str = "L", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


def test_image_folders_any_size_colour_and_every_bad_file_named(tmp_path: Path):
    happy = tmp_path / "train" / "happy"
    sad = tmp_path / "test" / "sad"
    happy.mkdir(parents=True)
    sad.mkdir(parents=True)
    (happy / "big_colour.jpg").write_bytes(_png(np.full((300, 200, 3), 90, np.uint8), "RGB", "JPEG"))
    (happy / "small.png").write_bytes(_png(np.zeros((48, 48), np.uint8)))
    (sad / "truncated.png").write_bytes(_png(np.full((64, 64), 7, np.uint8))[:60])
    (sad / "empty.png").write_bytes(b"")
    (sad / "text.png").write_bytes(b"this is not an image")
    (tmp_path / "train" / "bored").mkdir()
    (tmp_path / "train" / "bored" / "face.png").write_bytes(_png(np.zeros((48, 48), np.uint8)))
    (tmp_path / "train" / "notes.docx").write_bytes(b"x")
    (tmp_path / "_SUCCESS").touch()  # the landing zone's ready marker is not data

    result = readers.read_batch(tmp_path)
    kept = {f.source: f for f in result.faces}
    assert set(kept) == {"train/happy/big_colour.jpg", "train/happy/small.png"}
    assert kept["train/happy/big_colour.jpg"].pixels.shape == (48, 48)
    assert kept["train/happy/big_colour.jpg"].usage == "train"
    assert kept["train/happy/small.png"].label == EMOTIONS.index("happy")
    reasons = {r.source: r.reason for r in result.rejected}
    assert set(reasons) == {
        "test/sad/truncated.png",
        "test/sad/empty.png",
        "test/sad/text.png",
        "train/bored/face.png",
        "train/notes.docx",
    }
    assert reasons["test/sad/empty.png"] == "empty image"
    assert "truncated or corrupt image" in reasons["test/sad/truncated.png"]
    assert "not a readable image" in reasons["test/sad/text.png"]
    assert "not an emotion" in reasons["train/bored/face.png"]
    assert result.read == 7


def test_oversized_files_and_decompression_bombs_are_rejected(tmp_path: Path):
    folder = tmp_path / "neutral"
    folder.mkdir()
    (folder / "huge.png").write_bytes(_png(np.zeros((3000, 3000), np.uint8)))  # small file, 9 Mpx
    (folder / "fat.png").write_bytes(_png(np.random.default_rng(0).integers(0, 255, (400, 400), np.uint8)))
    result = readers.read_batch(tmp_path, max_bytes=50_000, max_pixels=1_000_000)
    reasons = {r.source: r.reason for r in result.rejected}
    assert reasons["neutral/huge.png"] == "image is 3000x3000 = 9000000 pixels; the limit is 1000000"
    assert "over the 50000-byte limit" in reasons["neutral/fat.png"]


def test_labels_file_layout(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(_png(np.zeros((48, 48), np.uint8)))
    (tmp_path / "b.png").write_bytes(_png(np.zeros((96, 96), np.uint8)))
    (tmp_path / "labels.csv").write_text("file,label\na.png,fear\nb.png,5\nmissing.png,happy\na.png,joy\n../x.png,3\n")
    result = readers.read_batch(tmp_path)
    assert [(f.source, f.label) for f in result.faces] == [("a.png", 2), ("b.png", 5)]
    reasons = {r.source: r.reason for r in result.rejected}
    assert reasons["missing.png"] == "file not found"
    assert "not an emotion" in reasons["a.png"]
    assert "outside the batch folder" in reasons["labels.csv:row 6"]


@pytest.mark.parametrize("value,expected", [("3", 3), (0, 0), ("Happy", 3), (" neutral ", 6)])
def test_emotion_index_accepts_codes_and_names(value, expected):
    assert emotion_index(value) == expected


@pytest.mark.parametrize("value", ["7", "-1", "joy", "", "3.0"])
def test_emotion_index_rejects_everything_else(value):
    with pytest.raises(ValueError, match="not an emotion"):
        emotion_index(value)


def test_extra_columns_become_slice_attributes_of_each_face(tmp_path: Path):
    pixels, labels, attributes = synthetic.generate_with_attributes(12, seed=5)
    attributes[3] = {**attributes[3], "skin": ""}  # a blank cell: the face has no value there
    landing.write_fer2013_csv(zip(pixels, labels, strict=True), tmp_path / "fer2013.csv", attributes=attributes)
    result = readers.read_batch(tmp_path)
    assert not result.rejected
    assert [f.attributes for f in result.faces][:3] == attributes[:3]
    assert "skin" not in result.faces[3].attributes and result.faces[3].attributes["pose"] == attributes[3]["pose"]

    images = tmp_path / "labelled"
    images.mkdir()
    (images / "a.png").write_bytes(_png(np.full((120, 100), 90, np.uint8)))
    (images / "b.png").write_bytes(_png(np.full((30, 40), 90, np.uint8)))
    (images / "labels.csv").write_text("file,label,Group Name\na.png,happy, north \nb.png,sad,south\n")
    faces = readers.read_batch(images).faces
    assert [f.attributes for f in faces] == [{"group_name": "north"}, {"group_name": "south"}]
    assert [f.source_side for f in faces] == [100, 30]  # the face_size slice comes from the source image


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("file,label,brightness", "computed by moodloop itself"),
        ("file,label,Source", "computed by moodloop itself"),  # where a face came from is moodloop's to say
        ("file,label,group,Group", "two columns name the slice attribute 'group'"),
        ("file,label,%%", "cannot name a slice"),
    ],
)
def test_a_column_that_cannot_be_a_slice_rejects_the_file_with_the_reason(tmp_path: Path, header: str, why: str):
    (tmp_path / "a.png").write_bytes(_png(np.full((48, 48), 90, np.uint8)))
    (tmp_path / "labels.csv").write_text(f"{header}\na.png,happy,x,y\n")
    result = readers.read_batch(tmp_path)
    assert not result.faces and result.rejected[0].source == "labels.csv:row 1"
    assert why in result.rejected[0].reason


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def test_every_format_and_mode_reads_as_the_same_grey_face(tmp_path: Path):
    """CMYK, 16-bit, palette and alpha images, and every accepted format, give the grey face of the
    plain picture (16-bit scaled, not clipped to white); the gateway accepts the same set
    (moodloop/core/encoded_images.py)."""
    rng = np.random.default_rng(3)
    grey = np.kron(rng.integers(30, 220, (12, 12)), np.ones((8, 8))).astype(np.uint8)  # 96x96, flat blocks
    plain = Image.fromarray(grey, "L")
    variants = {
        "grey.png": _encoded(plain, "PNG"),
        "sixteen.png": _encoded(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"),
        "palette.png": _encoded(plain.convert("P"), "PNG"),
        "alpha.png": _encoded(plain.convert("LA"), "PNG"),
        "rgba.png": _encoded(plain.convert("RGBA"), "PNG"),
        "cmyk.jpg": _encoded(plain.convert("CMYK"), "JPEG"),
        "rgb.jpg": _encoded(plain.convert("RGB"), "JPEG"),
        "anim.gif": _encoded(plain, "GIF"),
        "bitmap.bmp": _encoded(plain.convert("RGB"), "BMP"),
        "web.webp": _encoded(plain.convert("RGB"), "WEBP"),
        "scan.tiff": _encoded(plain, "TIFF"),
    }
    happy = tmp_path / "happy"
    happy.mkdir()
    for name, data in variants.items():
        (happy / name).write_bytes(data)
    result = readers.read_batch(tmp_path)
    assert not result.rejected, result.report()
    reference = readers.decode_face_and_side(variants["grey.png"])[0].astype(int)
    for face in result.faces:
        lossy = face.source.endswith((".jpg", ".webp"))
        assert np.abs(face.pixels.astype(int) - reference).mean() < (6 if lossy else 1), face.source
        assert face.source_side == 96
