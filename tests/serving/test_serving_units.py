"""Units of the gateway that need no model: TF Serving's config and REST formats, batching, traffic split."""

from __future__ import annotations

import base64
import json
import threading
import time

import numpy as np
import pytest

from moodloop.core import models_config
from moodloop.core.rollout import Rollout, TrafficFile, choose_label, client_bucket
from serving.backends import ServingError
from serving.batching import BatchingParameters, DynamicBatcher
from serving.rest_codec import parse_predict_request, predict_response


def test_the_champion_is_stable_on_disk_else_the_newest_version_else_none(tmp_path):
    """One answer to "which version do users get" (issue 29): the gate, warm start, the edge and
    card endpoints and `moodloop live` all ask Rollout.champion."""
    base, path = tmp_path / "models", tmp_path / "models.config"
    rollout = Rollout(path, "emotion")
    assert rollout.champion(base) is None  # no config, no version yet
    for version in (3, 5):
        (base / str(version)).mkdir(parents=True)
        (base / str(version) / "saved_model.pb").write_bytes(b"")
    assert rollout.champion(base) == 5  # no labels: the newest
    models_config.ensure(path, "emotion", base)
    models_config.set_label(path, "emotion", "stable", 3)
    models_config.set_label(path, "emotion", "canary", 5)
    assert rollout.champion(base) == 3
    (base / "3" / "saved_model.pb").unlink()  # stable's model gone (deleted by hand): what is on disk
    assert rollout.champion(base) == 5


def test_models_config_labels_pin_versions_and_promote(tmp_path):
    path = tmp_path / "models.config"
    models_config.ensure(path, "emotion", tmp_path / "models")
    policy = models_config.policies(models_config.read(path))["emotion"]
    assert (policy.policy, policy.latest, policy.labels) == ("latest", 2, {})
    assert policy.wanted([1, 5, 3]) == [3, 5]

    models_config.set_label(path, "emotion", "stable", 3)
    models_config.set_label(path, "emotion", "canary", 5)
    policy = models_config.policies(models_config.read(path))["emotion"]
    # TF Serving only accepts labels on loaded versions: labelling pins exactly those versions.
    assert (policy.policy, policy.specific, policy.labels) == ("specific", (3, 5), {"stable": 3, "canary": 5})
    assert "version_labels" in path.read_text()  # TF Serving's own text format

    assert models_config.promote(path, "emotion") == 5
    policy = models_config.policies(models_config.read(path))["emotion"]
    assert (policy.specific, policy.labels) == ((5,), {"stable": 5})
    with pytest.raises(LookupError, match="no 'canary'"):
        models_config.promote(path, "emotion")

    models_config.set_label(path, "emotion", "canary", 6)
    assert models_config.rollback(path, "emotion") == 6
    assert models_config.policies(models_config.read(path))["emotion"].labels == {"stable": 5}
    with pytest.raises(ValueError, match="label"):
        models_config.set_label(path, "emotion", "bad label", 1)


def test_models_config_rejects_garbage(tmp_path):
    path = tmp_path / "models.config"
    path.write_text("model_config_list { config { nme: 'x' } }")
    with pytest.raises(ValueError, match="Error parsing text-format tensorflow.serving.ModelServerConfig"):
        models_config.read(path)


def test_batching_parameters_read_tf_serving_format(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 500 }\nunknown_knob { value: 3 }\n")
    params = BatchingParameters.read(path)
    assert (params.max_batch_size, params.batch_timeout_micros) == (16, 500)
    assert BatchingParameters.read(tmp_path / "absent") == BatchingParameters()


def test_rest_row_and_columnar_formats():
    image = b"\x89PNG fake"
    b64 = {"b64": base64.b64encode(image).decode()}
    signature, inputs, style = parse_predict_request({"instances": [b64, b64]}, ["images"])
    assert (signature, style) == ("", "row") and list(inputs["images"]) == [image, image]

    signature, inputs, style = parse_predict_request(
        {"signature_name": "serving_pixels", "inputs": {"pixels": [[[1, 2]], [[3, 4]]]}}, ["pixels"]
    )
    assert (signature, style, inputs["pixels"].shape) == ("serving_pixels", "columnar", (2, 1, 2))

    _, inputs, _ = parse_predict_request({"instances": [{"pixels": [[1]]}, {"pixels": [[2]]}]}, ["pixels"])
    assert inputs["pixels"].tolist() == [[[1]], [[2]]]

    outputs = {"classes": np.array([b"happy", b"sad"], dtype=object), "class_ids": np.array([3, 4])}
    assert predict_response(outputs, "row") == {
        "predictions": [{"class_ids": 3, "classes": "happy"}, {"class_ids": 4, "classes": "sad"}]
    }
    assert predict_response(outputs, "columnar") == {"outputs": {"class_ids": [3, 4], "classes": ["happy", "sad"]}}
    assert predict_response({"thumb_bytes": np.array([b"\x00"], dtype=object)}, "row") == {
        "predictions": [{"b64": "AA=="}]
    }


@pytest.mark.parametrize(
    "body, message",
    [
        ([1, 2], "must be a JSON object"),
        ({}, "Missing 'inputs' or 'instances'"),
        ({"instances": [1], "inputs": [1]}, "either 'instances' or 'inputs'"),
        ({"instances": []}, "non-empty"),
        ({"instances": [[1, 2], [3]]}, "ragged"),
        ({"instances": [{"b64": "***"}]}, "not valid base64"),
        ({"instances": [{"a": 1}, {"b": 2}]}, "same named inputs"),
        ({"signature_name": 3, "instances": [1]}, "signature_name"),
    ],
)
def test_rest_bad_requests_are_invalid_argument(body, message):
    with pytest.raises(ServingError, match=message) as caught:
        parse_predict_request(body, ["images"])
    assert caught.value.code == "INVALID_ARGUMENT"


def test_dynamic_batcher_merges_concurrent_requests_and_splits_answers():
    calls: list[int] = []

    def run(inputs):
        calls.append(len(inputs["x"]))
        return {"y": inputs["x"] * 10}

    batcher = DynamicBatcher(
        run, BatchingParameters(max_batch_size=64, batch_timeout_micros=50_000, num_batch_threads=1)
    )
    results: dict[int, np.ndarray] = {}

    def client(i: int) -> None:
        results[i] = batcher.submit({"x": np.full((2, 3), i)})["y"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert all((results[i] == i * 10).all() and results[i].shape == (2, 3) for i in range(16))
    assert sum(calls) == 32 and len(calls) < 16  # merged: fewer model calls than requests


def test_dynamic_batcher_passes_model_errors_to_every_caller():
    def run(inputs):
        raise RuntimeError("model failed")

    batcher = DynamicBatcher(run, BatchingParameters(batch_timeout_micros=0))
    with pytest.raises(RuntimeError, match="model failed"):
        batcher.submit({"x": np.zeros((1, 2))})
    batcher.close()


def test_no_model_output_or_error_stops_a_batching_thread():
    """Issue 27: a signature whose output is a scalar killed the batching thread (IndexError while
    splitting), and every later request to it waited until its deadline. Now a scalar output goes
    back whole to a lone caller, a merged batch whose outputs cannot be split is retried caller by
    caller, a model that raises fails only its callers, and the one thread goes on serving."""
    calls: list[tuple] = []

    def run(inputs):
        calls.append(tuple(np.shape(v) for v in inputs.values()))
        if "boom" in inputs:
            raise RuntimeError("the model raised")
        return {"total": np.float32(np.sum(inputs["x"]))}  # a scalar: no rows to split

    params = BatchingParameters(max_batch_size=64, batch_timeout_micros=100_000, num_batch_threads=1)
    batcher = DynamicBatcher(run, params)
    assert batcher.submit({"x": np.ones((3, 2))}, timeout=5)["total"] == 6.0
    assert batcher.submit({"x": np.float32(2.0)}, timeout=5)["total"] == 2.0  # a scalar input runs alone
    with pytest.raises(RuntimeError, match="the model raised"):
        batcher.submit({"x": np.ones((1,)), "boom": np.ones((1,))}, timeout=5)
    # Inputs of different lengths are the model's business (TF Serving unbatched), not a refusal.
    assert batcher.submit({"x": np.ones((2,)), "y": np.ones((5,))}, timeout=5)["total"] == 2.0
    # Two callers merged into one call: the scalar output cannot be split, so each runs alone.
    results: dict[int, float] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.submit({"x": np.full((1, 2), i)}, 5)))
        for i in (1, 2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: float(r["total"]) for i, r in results.items()} == {1: 2.0, 2: 4.0}
    assert batcher.submit({"x": np.ones((1, 2))}, timeout=5)["total"] == 2.0  # still serving
    batcher.close()


def test_traffic_split_is_sticky_proportional_and_monotonic(tmp_path):
    labels = {"stable": 1, "canary": 2}
    clients = [f"client-{i}" for i in range(1000)]
    at_10 = {c for c in clients if choose_label(c, labels, 0.10) == "canary"}
    at_50 = {c for c in clients if choose_label(c, labels, 0.50) == "canary"}
    assert 70 <= len(at_10) <= 130 and 440 <= len(at_50) <= 560
    assert at_10 <= at_50  # ramping only moves clients to canary
    assert all(choose_label(c, labels, 0.10) == ("canary" if c in at_10 else "stable") for c in clients)
    assert choose_label("x", {"stable": 1}, 0.5) == "stable"  # no canary: everything to stable
    assert choose_label("x", {}, 0.5) is None  # no labels yet: the newest version
    assert 0 <= client_bucket("anything") < 1

    traffic = TrafficFile(tmp_path / "traffic.json", default_share=0.1)
    assert traffic.share() == 0.1
    traffic.set(0.5)
    assert traffic.share() == 0.5
    # Another process (the canary analysis) moves the share: seen within RECHECK_SECONDS, while
    # the file is not looked at on every request.
    TrafficFile(tmp_path / "traffic.json", default_share=0.1).set(0.25)
    time.sleep(TrafficFile.RECHECK_SECONDS + 0.05)
    assert traffic.share() == 0.25
    with pytest.raises(ValueError, match="between 0 and 1"):
        traffic.set(1.5)


def test_dynamic_batcher_refuses_work_after_close_instead_of_hanging():
    from serving.batching import BatcherClosedError

    batcher = DynamicBatcher(lambda inputs: inputs, BatchingParameters(batch_timeout_micros=0))
    assert batcher.submit({"x": np.ones((1, 2))})["x"].shape == (1, 2)
    batcher.close()
    with pytest.raises(BatcherClosedError):  # a request that resolved the old version just before the swap
        batcher.submit({"x": np.ones((1, 2))}, timeout=5)


def test_the_tracker_keeps_each_persons_id_across_frames():
    from serving.tracking import IouTracker, iou

    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0 and iou((0, 0, 10, 10), (20, 0, 10, 10)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    tracker = IouTracker(min_iou=0.3, max_missed=1)
    left, right = (10, 10, 40, 40), (200, 10, 40, 40)
    assert tracker.update([left, right]) == [1, 2]
    # They drift a little and the detector lists them the other way round: the ids follow the faces.
    assert tracker.update([(205, 12, 40, 40), (14, 10, 40, 40)]) == [2, 1]
    # The right one looks away for one sampled frame: its id is kept for it ...
    assert tracker.update([(16, 10, 40, 40)]) == [1]
    assert tracker.update([(18, 10, 40, 40), (206, 12, 40, 40)]) == [1, 2]
    # ... but one gone for longer than max_missed is a new person when a face appears there again.
    tracker.update([(18, 10, 40, 40)])
    tracker.update([(18, 10, 40, 40)])
    assert tracker.update([(18, 10, 40, 40), (206, 12, 40, 40)]) == [1, 3]
    # Two faces competing for one track: the better overlap keeps the id, the other is new.
    assert tracker.update([(30, 10, 40, 40), (19, 10, 40, 40), (206, 12, 40, 40)]) == [4, 1, 3]
    with pytest.raises(ValueError):
        IouTracker(min_iou=0.0)


def test_people_summary_smoothing_and_csv_of_a_timeline():
    from moodloop.core.contracts import EMOTIONS
    from serving.tracking import CSV_COLUMNS, Smoother, people_summary, timeline_csv

    smoother = Smoother(window=3)
    happy, sad = np.eye(7)[EMOTIONS.index("happy")], np.eye(7)[EMOTIONS.index("sad")]
    smoothed = [EMOTIONS[int(np.argmax(smoother.update(1, p)))] for p in (happy, happy, sad, happy)]
    assert smoothed == ["happy", "happy", "happy", "happy"]  # one odd frame does not flip it

    def face(person, emotion, x):
        probabilities = dict.fromkeys(EMOTIONS, 0.0) | {emotion: 1.0}
        box = {"x": x, "y": 0, "width": 10, "height": 10}
        return {
            "person": person,
            "emotion": emotion,
            "confidence": 1.0,
            "uncertain": False,
            "box": box,
            "probabilities": probabilities,
        }

    timeline = [
        {"frame": 0, "time": 0.0, "faces": [face(1, "happy", 0), face(2, "sad", 50)]},
        {"frame": 12, "time": 0.5, "faces": [face(1, "happy", 1)]},
        {"frame": 24, "time": 1.0, "faces": [face(1, "surprise", 2), face(2, "sad", 51)]},
    ]
    people = {p["person"]: p for p in people_summary(timeline)}
    assert people[1] == {
        "person": 1,
        "first_seen": 0.0,
        "last_seen": 1.0,
        "frames": 3,
        "emotions": {"happy": 0.667, "surprise": 0.333},
        "dominant_emotion": "happy",
    }
    assert people[2]["frames"] == 2 and people[2]["dominant_emotion"] == "sad"
    rows = timeline_csv(timeline).splitlines()
    assert rows[0].split(",") == list(CSV_COLUMNS) and len(rows) == 1 + 5
    assert rows[1].startswith("0.0,0,1,happy,1.0,False,,0,0,10,10,")


def test_corrected_faces_wait_on_disk_until_the_landing_zone_takes_the_batch(tmp_path):
    from moodloop.core.settings import Settings
    from serving.corrections import Corrections, RecentFaces

    settings = Settings.from_env(home=tmp_path / "home", serving={"corrections_per_batch": 2})
    delivered: list[tuple[str, dict[str, bytes]]] = []
    reachable = [False]

    def deliver(_, name, files):
        if not reachable[0]:
            raise ConnectionError("the S3 endpoint is down")
        delivered.append((name, files))
        return f"s3://bucket/landing/{name}"

    corrections = Corrections(settings, deliver, background=False)
    face = np.full((48, 48), 7, np.uint8)
    assert corrections.add(face, "sad", "r1", 0) is False
    assert corrections.deliver_pending() is None  # too few faces yet
    corrections.add(face, "fear", "r1", 1)
    assert corrections.deliver_pending() is None  # a full batch, but the zone is out of reach
    counts = corrections.counts()
    assert counts["pending"] == 2 and "the S3 endpoint is down" in counts["last_error"] and delivered == []
    reachable[0] = True
    corrections.add(face, "happy", "r1", 1, sender="10.0.0.9 (feedback token)")  # relabelled: the last word counts
    assert corrections.deliver_pending() == f"s3://bucket/landing/{delivered[0][0]}"
    name, files = delivered[0]
    assert name.startswith("corrections-")
    assert sorted(files) == ["faces/r1-0.png", "faces/r1-1.png", "labels.csv", "senders.json"]
    assert files["labels.csv"].decode().splitlines() == ["file,label", "faces/r1-1.png,happy", "faces/r1-0.png,sad"]
    # who sent each label; the relabelled face is the last sender's
    senders = json.loads(files["senders.json"])
    assert senders == {"faces/r1-0.png": "unknown", "faces/r1-1.png": "10.0.0.9 (feedback token)"}
    assert not list(corrections.pending_dir.iterdir())  # no sender file left behind
    assert corrections.counts() | {"last_batch": None} == {
        "pending": 0,
        "per_batch": 2,
        "delivered_batches": 1,
        "delivered_faces": 2,
        "last_batch": None,
    }
    with (corrections.folder / "delivered.jsonl").open("a") as journal:
        journal.write('{"time": 1, "batch": "torn')  # a crash mid-line: the count stays readable
    assert corrections.counts()["delivered_batches"] == 1
    with pytest.raises(ValueError, match="not an emotion"):
        corrections.add(face, "bored", "r2", 0)

    recent = RecentFaces(capacity=3)
    recent.add("a", 0, np.zeros((2, 48, 48), np.uint8))
    recent.add("b", 5, np.ones((2, 48, 48), np.uint8))
    assert recent.get("a", 0) is None and recent.get("a", 1) is not None  # the oldest went first
    assert recent.get("b", 6).max() == 1 and recent.get("b", 7) is None


def test_reading_a_window_of_the_log_opens_only_what_can_hold_it(tmp_path, monkeypatch):
    """read_log's answer equals reading everything and filtering; older hour partitions are
    never opened, and with a limit reading stops at the first file that starts after it."""
    from datetime import datetime, timedelta, timezone
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from moodloop.core import log_records

    start = datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc)
    root = tmp_path / "predictions"
    everything = []
    for flush in range(48):  # 12 hours, a file every 15 minutes, 50 records each
        at = start + timedelta(minutes=15 * flush)
        stamps = [at + timedelta(seconds=10 * i) for i in range(50)]
        table = pa.table(
            {
                "timestamp": pa.array(stamps, pa.timestamp("ms", tz="UTC")),
                "request_id": [f"r{flush}-{i}" for i in range(50)],
            }
        )
        folder = root / at.strftime("date=%Y-%m-%d/hour=%H")
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / f"part-{flush:03d}.parquet")
        everything.append(table)
    (root / "date=2026-11-30" / "hour=19" / ".part-being-written.parquet").write_bytes(b"half")
    opened = []
    real_read = pq.read_table
    monkeypatch.setattr(
        pq, "read_table", lambda path, *a, **k: opened.append(Path(path).name) or real_read(path, *a, **k)
    )

    all_rows = pa.concat_tables(everything)
    since = start + timedelta(hours=9, minutes=20)  # inside hour 17
    expected = [
        r
        for r, t in zip(all_rows["request_id"].to_pylist(), all_rows["timestamp"].to_pylist(), strict=True)
        if t > since
    ]
    window = log_records.read_log(tmp_path, "predictions", since)
    assert window["request_id"].to_pylist() == expected
    assert min(opened) == "part-037.parquet"  # hour 17's files from 17:15 on; none of hours 8-16
    opened.clear()
    first_120 = log_records.read_log(tmp_path, "predictions", since, limit=120)
    assert first_120["request_id"].to_pylist() == expected[:120]
    # 19 records of 17:15's file are after 17:20, then 50 + 50 + 50: the fifth file starts after the 120th
    assert opened == [f"part-{n:03d}.parquet" for n in (37, 38, 39, 40)]
    assert log_records.read_log(tmp_path, "predictions", start + timedelta(hours=20)).num_rows == 0
