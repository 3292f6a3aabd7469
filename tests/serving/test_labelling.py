"""The labelling queue: the live faces kept (opt-in), the faces worth a label chosen from them, the
Label tab's API, and the answers landing as a batch the data contract reads."""

from __future__ import annotations

import dataclasses
import io
import json
import time
from datetime import datetime, timedelta, timezone

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components import live_faces
from components.ab_gate import feedback_examples
from data import synthetic
from data.readers import read_batch
from monitoring import labelling
from moodloop.core.contracts import EMOTIONS, LOG_EMBEDDING_COLUMNS, LOG_FACES, LOG_PROBABILITY_COLUMNS
from moodloop.core.log_records import Prediction, read_log
from serving.inference_log import InferenceLog
from tests.serving.conftest import send_live_faces


def _faces(probabilities: np.ndarray, embeddings: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(probabilities, columns=list(LOG_PROBABILITY_COLUMNS))
    for i, column in enumerate(LOG_EMBEDDING_COLUMNS[: embeddings.shape[1]]):
        frame[column] = embeddings[:, i]
    return frame


def test_the_loop_asks_about_uncertain_faces_from_every_corner_of_the_embedding():
    """Four clusters of faces: one the model is sure of, three it is not, one of these far larger.
    Uncertainty alone would spend the labels on the large cluster; random choice on the sure one
    too; the loop's choice covers every unsure cluster and none of the sure one."""
    rng = np.random.default_rng(0)
    sizes, centres = (400, 300, 20, 20), np.zeros((4, 8))
    centres[1, 0], centres[2, 1], centres[3, 7] = 6.0, 6.0, 6.0
    cluster = np.repeat(np.arange(4), sizes)
    embeddings = centres[cluster] + rng.normal(0, 0.5, (len(cluster), 8))
    sure = np.tile([0.97, 0.005, 0.005, 0.005, 0.005, 0.005, 0.005], (len(cluster), 1))
    unsure = np.tile([0.4, 0.35, 0.05, 0.05, 0.05, 0.05, 0.05], (len(cluster), 1))
    # the large unsure cluster is the least sure of all: a pool by uncertainty alone is all of it
    unsure[cluster == 1] = [0.36, 0.35, 0.06, 0.06, 0.06, 0.06, 0.05]
    probabilities = np.where((cluster == 0)[:, None], sure, unsure)
    faces = _faces(probabilities, embeddings)

    chosen = labelling.choose(faces, 12, "loop")
    clusters = cluster[[i for i, _ in chosen]]
    assert len(chosen) == 12 and len({i for i, _ in chosen}) == 12
    assert 0 not in clusters and {1, 2, 3} <= set(clusters)
    assert all("margin" in why for _, why in chosen)
    by_margin = np.argsort(labelling.margins(probabilities), kind="stable")[:12]
    assert set(cluster[by_margin]) == {1}  # what uncertainty alone would have asked
    drawn = cluster[[i for i, _ in labelling.choose(faces, 12, "random", seed=1)]]
    assert (drawn == 0).sum() >= 3  # a random draw spends labels on faces the model is sure of
    with pytest.raises(ValueError, match="not one of loop, random"):
        labelling.choose(faces, 3, "smart")


def test_k_center_greedy_spreads_and_stops_at_duplicates():
    points = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [0.0, 10.0], [0.0, 10.0]])
    assert labelling.k_center_greedy(points, 3) == [0, 2, 3]
    assert labelling.k_center_greedy(points, 5) == [0, 2, 3, 1]  # [4] is [3] again: not asked twice
    assert labelling.k_center_greedy(np.zeros((4, 2)), 3) == [0]  # duplicates only: one is enough
    # weighted: a far point the model is sure of (weight ~0) comes after a near unsure one
    assert labelling.k_center_greedy(points, 2, weights=np.array([1, 1, 0.001, 0.001, 0.001])) == [0, 1]
    assert labelling.k_center_greedy(points, 0) == []


def _prediction(i: int, pixels: np.ndarray, when: float) -> Prediction:
    return Prediction(
        request_id=f"r{i}",
        instance=0,
        client_id="",
        model_name="emotion",
        model_version=1,
        model_label="stable",
        signature="serving_pixels",
        api="rest",
        latency_ms=1.0,
        probabilities=np.full(7, 1 / 7),
        pixels=pixels,
        embedding=np.zeros(8),
        timestamp=when,
    )


def test_the_live_face_sample_is_bounded_per_hour_and_pruned_after_its_days(tmp_path, gateway_settings):
    pixels, _ = synthetic.generate_arrays(5, seed=3)
    log = InferenceLog(str(tmp_path / "log"), buffer_records=100, flush_seconds=60, faces_per_hour=3)
    old = time.time() - 9 * 86400
    for i, face in enumerate(pixels):
        log.log(_prediction(i, face, old if i == 4 else time.time()))
    log.close()
    faces = read_log(tmp_path / "log", LOG_FACES).to_pylist()
    predictions = read_log(tmp_path / "log", "predictions")
    assert predictions.num_rows == 5 and log.buffered() == 0  # every prediction logged; nothing held
    assert len(faces) == 4 and log.faces_not_kept == 1  # 3 in this hour (the 4th not kept), 1 nine days ago
    assert {f["request_id"] for f in faces} == {"r0", "r1", "r2", "r4"}
    for face in faces:  # each face whole, as the model saw it
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(face["face_png"]))), pixels[int(face["request_id"][1:])])

    settings = dataclasses.replace(gateway_settings, inference_log_url=str(tmp_path / "log"))
    assert labelling.prune_live_faces(settings) == 1
    assert {f["request_id"] for f in read_log(tmp_path / "log", LOG_FACES).to_pylist()} == {"r0", "r1", "r2"}


def test_kept_faces_split_into_answered_feedback_labelled_corrected_and_unlabelled(tmp_path):
    """components/live_faces.py: since the drift, a face answered in the Label tab is curated; one
    with a feedback label judges (the A/B gate); one of a photo the faces page analysed whose
    feedback is a correction trains as curated data, so it does neither; the rest self-train."""
    from moodloop.core.log_records import Feedback

    pixels, _ = synthetic.generate_arrays(6, seed=4)
    log = InferenceLog(str(tmp_path / "log"), flush_seconds=60, faces_per_hour=100)
    since = time.time() - 1
    for i, face in enumerate(pixels):
        prediction = _prediction(i, face, time.time())
        prediction.api = "faces" if i == 3 else "rest"  # r3: a face of a photo on the faces page
        log.log(prediction)
    for request_id, label in (("r1", "sad"), ("r2", "angry"), ("r2", "happy"), ("r3", "fear"), ("r4", "bored")):
        log.log(Feedback(request_id, 0, label))
    log.close()
    (tmp_path / "labelling").mkdir()
    (tmp_path / "labelling" / "answers.jsonl").write_text('{"face_id": "r0-0", "answer": "sad"}\n')
    pool = live_faces.Pool(str(tmp_path / "log"), since, str(tmp_path / "labelling"))
    judging, labels = live_faces.feedback_labelled_faces(pool, most=10)
    assert labels.tolist() == [EMOTIONS.index("sad"), EMOTIONS.index("happy")]  # r1, r2 (its latest label)
    assert [np.asarray(Image.open(io.BytesIO(png))).tolist() for png in judging] == [
        pixels[1].tolist(),
        pixels[2].tolist(),
    ]
    unlabelled = live_faces.unanswered_faces(pool, most=10)  # r4 (an unknown label is none) and r5
    assert [np.asarray(Image.open(io.BytesIO(png))).tolist() for png in unlabelled] == [
        pixels[4].tolist(),
        pixels[5].tolist(),
    ]


def test_drifted_faces_are_queued_labelled_in_the_label_tab_and_land_as_a_batch(running, labelling_desk):
    settings, desk = labelling_desk
    http = httpx.Client(base_url=f"http://127.0.0.1:{running.rest_port}", timeout=30)
    assert http.get("/v1/labelling/next").json()["face"] is None  # nothing queued yet
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    request_id, truth = send_live_faces(http, settings, 40, since)

    queued = labelling.fill_queue(settings, since, reason="drift (test)")
    assert queued == {"queued": 10, "strategy": "loop", "from_faces": 40, "budget": 5}
    queue = json.loads((settings.labelling_dir / "queue.json").read_text())
    assert [f["request_id"] for f in queue["faces"]] == [request_id] * 10 and queue["reason"] == "drift (test)"

    before = set(settings.landing_dir.iterdir()) if settings.landing_dir.exists() else set()
    asked, answers = [], ["skip", "not_a_face"]
    refused = http.post("/v1/labelling/answer", json={"face_id": "nobody-0", "answer": "happy"})
    assert refused.status_code == 400 and "not in the labelling queue" in refused.json()["error"]
    while (shown := http.get("/v1/labelling/next").json())["face"] is not None and len(asked) < 7:
        face = shown["face"]
        assert face["png_b64"] and face["predicted"] in EMOTIONS and face["face_id"] not in asked
        asked.append(face["face_id"])
        answer = answers[len(asked) - 1] if len(asked) <= 2 else EMOTIONS[truth[face["instance"]]]
        bad = http.post("/v1/labelling/answer", json={"face_id": face["face_id"], "answer": "maybe"})
        assert bad.status_code == 400 and "not one of" in bad.json()["error"]
        took = http.post("/v1/labelling/answer", json={"face_id": face["face_id"], "answer": answer}).json()
        assert took["batch_complete"] == (len(asked) == 7)  # skip and not-a-face are not labels
    assert len(asked) == 7 and shown["waiting"] == 3
    deadline = time.monotonic() + 60
    while desk.labelled.counts()["delivered_batches"] < 1:
        assert time.monotonic() < deadline, "the batch of answers was not delivered"
        time.sleep(0.1)  # delivered in the background
    (batch,) = set(settings.landing_dir.iterdir()) - before
    assert batch.name.startswith("labelled-") and (batch / "_SUCCESS").exists()
    faces = read_batch(batch)
    assert not faces.rejected and len(faces.faces) == 5
    expected = {f"faces/{face_id}.png": EMOTIONS[truth[int(face_id.rsplit("-", 1)[1])]] for face_id in asked[2:]}
    assert {f.source: EMOTIONS[f.label] for f in faces.faces} == expected

    # Users label 4 more kept faces by feedback (one twice: the latest counts), and one answered face
    # too: the A/B gate judges on the 4, and self-training pseudo-labels neither them nor the answered
    unasked = [i for i in range(40) if f"{request_id}-{i}" not in asked][:4]
    for i in unasked:
        sent = http.post("/v1/feedback", json={"request_id": request_id, "instance": i, "label": "angry"})
        assert sent.status_code == 202, sent.text
    for i in [*unasked, int(asked[-1].rsplit("-", 1)[1])]:
        http.post("/v1/feedback", json={"request_id": request_id, "instance": i, "label": EMOTIONS[truth[i]]})
    assert queue["since"] == since.timestamp()
    pool = live_faces.Pool(str(settings.inference_log_url), queue["since"], str(settings.labelling_dir))
    # the feedback log is written in the background: wait for the final labels, not the first ones
    # (a flush between the two rounds shows "angry" first)
    deadline, expected = time.monotonic() + 60, [truth[i] for i in unasked]
    while (judging := live_faces.feedback_labelled_faces(pool, most=1000)[1]).tolist() != expected:
        assert time.monotonic() < deadline, f"feedback labels {judging.tolist()}, expected {expected}"
        time.sleep(0.3)
    unanswered = live_faces.unanswered_faces(pool, most=1000)
    assert len(unanswered) == 29 and all(png.startswith(b"\x89PNG") for png in unanswered)
    assert len(live_faces.unanswered_faces(pool, most=5)) == 5
    import tensorflow as tf

    examples, labels = feedback_examples(pool)
    parsed = [tf.train.Example.FromString(e).features.feature for e in examples]
    assert [f["label"].int64_list.value[0] for f in parsed] == labels.tolist() == judging.tolist()
    assert all(b"source=feedback" in f["slice"].bytes_list.value for f in parsed)
    assert len(feedback_examples(None)[0]) == 0  # not after a drift: none

    # a new queue from the same faces does not ask again what was answered
    again = labelling.fill_queue(settings, since, reason="drift (again)")
    assert again["from_faces"] == 33
    requeued = {f["face_id"] for f in json.loads((settings.labelling_dir / "queue.json").read_text())["faces"]}
    assert not requeued & set(asked)
