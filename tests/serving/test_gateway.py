"""The gateway against the official clients: TF Serving's REST API with plain HTTP, and its gRPC
API with tensorflow-serving-api's stubs, on the embedded backend."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from moodloop.core.contracts import EMOTIONS
from tests.serving.conftest import ADMIN_TOKEN


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 48), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


@pytest.fixture(scope="module")
def http(running):
    with httpx.Client(base_url=f"http://127.0.0.1:{running.rest_port}", timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def channel(running):
    with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        yield channel


def saved_model_answer(model_base, version: int, images: list[bytes]) -> np.ndarray:
    loaded = tf.saved_model.load(str(model_base / str(version)))
    return loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy()


def test_rest_row_format_matches_the_saved_model(http, model_base):
    images = [png(1), png(2)]
    response = http.post("/v1/models/emotion/versions/1:predict", json={"instances": [b64(i) for i in images]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    image_outputs = ["image_brightness", "image_contrast", "image_height", "image_sharpness", "image_width"]
    assert [sorted(p) for p in predictions] == [
        ["class_ids", "classes", "embedding", *image_outputs, "probabilities"]
    ] * 2
    assert len(predictions[0]["embedding"]) == 8
    expected = saved_model_answer(model_base, 1, images)
    np.testing.assert_allclose([p["probabilities"] for p in predictions], expected, rtol=1e-5, atol=1e-6)
    assert [p["classes"] for p in predictions] == [EMOTIONS[i] for i in expected.argmax(1)]
    assert len(response.headers["x-request-id"]) == 32


def test_rest_columnar_pixels_by_version_and_label(http, labels):
    pixels = np.random.default_rng(3).integers(0, 255, (3, 48, 48)).tolist()
    body = {"signature_name": "serving_pixels", "inputs": {"pixels": pixels}}
    v1 = http.post("/v1/models/emotion/versions/1:predict", json=body).json()["outputs"]
    v2 = http.post("/v1/models/emotion/versions/2:predict", json=body).json()["outputs"]
    assert np.asarray(v1["probabilities"]).shape == (3, 7)
    assert not np.allclose(v1["probabilities"], v2["probabilities"])  # two different models answered
    labels(stable=1, canary=2)
    assert http.post("/v1/models/emotion/labels/stable:predict", json=body).json()["outputs"] == v1
    assert http.post("/v1/models/emotion/labels/canary:predict", json=body).json()["outputs"] == v2


def test_rest_status_and_metadata_have_tf_servings_shape(http):
    status = http.get("/v1/models/emotion").json()
    assert sorted(status["model_version_status"], key=lambda s: s["version"]) == [
        {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}} for v in ("1", "2")
    ]
    assert http.get("/v1/models/emotion/versions/1").json()["model_version_status"][0]["version"] == "1"
    metadata = http.get("/v1/models/emotion/versions/1/metadata").json()
    assert metadata["model_spec"] == {"name": "emotion", "signature_name": "", "version": "1"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "serving_pixels", "serving_examples", "serving_explain"} <= set(signatures)
    assert signatures["serving_default"]["inputs"]["images"]["dtype"] == "DT_STRING"


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/v1/models/nomodel:predict", {"instances": [1]}, 404, "Servable not found"),
        ("/v1/models/emotion/versions/99:predict", {"instances": [1]}, 404, "Specific(emotion, 99)"),
        ("/v1/models/emotion/labels/nolabel:predict", {"instances": [1]}, 400, "Unrecognized servable version label"),
        ("/v1/models/emotion:predict", {"signature_name": "nosig", "instances": [1]}, 400, "nosig"),
        ("/v1/models/emotion:predict", {"instances": [{"wrong": 1}]}, 400, "alias not found"),
        # shapes are the model's to check (as in TF Serving); the error names the declared shape
        ("/v1/models/emotion:predict", {"signature_name": "serving_pixels", "instances": [[1, 2]]}, 400, "declares"),
        ("/v1/models/emotion:predict", {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}, 400, ""),
        ("/v1/models/emotion:predict", {"nothing": 1}, 400, "Missing 'inputs' or 'instances'"),
        ("/v1/models/emotion:frobnicate", {"instances": [1]}, 400, "Malformed request"),  # TF Serving: 400
    ],
)
def test_rest_bad_requests_get_tf_serving_errors(http, path, body, status, message):
    response = http.post(path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_rest_unparseable_and_oversized_bodies(http, gateway_settings):
    response = http.post("/v1/models/emotion:predict", content=b"{not json")
    assert response.status_code == 400 and "JSON Parse error" in response.json()["error"]
    too_big = b"x" * (gateway_settings.serving.max_upload_bytes + 1)
    response = http.post("/v1/models/emotion:predict", content=too_big)
    assert response.status_code == 413 and "limit" in response.json()["error"]


def test_grpc_predict_metadata_status_with_official_stubs(channel, model_base):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    images = [png(5)]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "emotion"
    request.model_spec.version.value = 1
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    response, call = stub.Predict.with_call(request, timeout=30)
    assert response.model_spec.version.value == 1 and response.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["probabilities"]), saved_model_answer(model_base, 1, images), rtol=1e-5
    )
    assert dict(call.initial_metadata())["x-request-id"]

    meta_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta_request.model_spec.name = "emotion"
    meta = stub.GetModelMetadata(meta_request, timeout=10)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(signature_map)
    assert meta.model_spec.version.value == 2 and "serving_pixels" in signature_map.signature_def

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "emotion"
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=10)
    assert sorted((s.version, s.state) for s in status.model_version_status) == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
    ]


def test_the_explanation_signature_answers_over_rest_and_grpc(http, channel):
    """Every version explains itself (components/explain.py): a heatmap per face, in 0..1, for the
    class the model predicts; the same over both APIs (in CI: from the real TF Serving)."""
    pixels = np.random.default_rng(5).integers(0, 255, (3, 48, 48))
    body = {"signature_name": "serving_explain", "inputs": {"pixels": pixels.tolist()}}
    explained = http.post("/v1/models/emotion/versions/1:predict", json=body)
    assert explained.status_code == 200, explained.text
    rest = explained.json()["outputs"]
    heatmap = np.asarray(rest["heatmap"])
    assert heatmap.shape == (3, 48, 48) and heatmap.min() >= 0 and np.allclose(heatmap.max(axis=(1, 2)), 1)
    predicted = http.post(
        "/v1/models/emotion/versions/1:predict", json={**body, "signature_name": "serving_pixels"}
    ).json()["outputs"]
    assert rest["class_ids"] == predicted["class_ids"]

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "emotion"
    request.model_spec.version.value = 1
    request.model_spec.signature_name = "serving_explain"
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(pixels.astype(np.uint8)))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["heatmap"]), heatmap, atol=1e-5)


def test_grpc_errors_carry_tf_serving_codes(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "emotion"
    request.model_spec.version.value = 42
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([png(1)]))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    request.model_spec.ClearField("version")
    request.model_spec.signature_name = "serving_pixels"
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 10, 10), np.uint8)))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_canary_split_is_sticky_and_every_request_is_logged(running, http, labels, gateway_settings):
    from moodloop.core.log_records import read_log

    labels(stable=1, canary=2)
    running.dataplane.traffic.set(0.10)
    body = {"signature_name": "serving_pixels", "inputs": {"pixels": np.zeros((1, 48, 48), int).tolist()}}
    stable_answer = http.post("/v1/models/emotion/labels/stable:predict", json=body).json()
    request_ids, sides = set(), {}
    for i in range(1000):
        response = http.post("/v1/models/emotion:predict", json=body, headers={"x-client-id": f"user-{i % 500}"})
        assert response.status_code == 200
        request_ids.add(response.headers["x-request-id"])
        side = "stable" if response.json() == stable_answer else "canary"
        assert sides.setdefault(f"user-{i % 500}", side) == side  # sticky per client
    canary = sum(1 for i in range(1000) if sides[f"user-{i % 500}"] == "canary")
    assert 60 <= canary <= 140, canary  # ~100 of 1000
    running.dataplane.traffic.set(0.0)

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = {r["request_id"]: r for r in read_log(gateway_settings.inference_log_url).to_pylist()}
        if request_ids <= set(rows):
            break
        time.sleep(0.5)
    assert request_ids <= set(rows), f"{len(request_ids - set(rows))} requests missing from the inference log"
    logged = [rows[r] for r in request_ids]
    assert sum(r["model_label"] == "canary" for r in logged) == canary
    assert {r["model_version"] for r in logged if r["model_label"] == "canary"} == {2}
    row = logged[0]
    assert abs(sum(row[f"prob_{e}"] for e in EMOTIONS) - 1) < 1e-4 and row["brightness"] == 0.0
    assert all(row[f"emb_{i}"] is not None for i in range(8))  # the model's embedding, for drift
    assert running.dataplane.inference_log.dropped == 0


def test_the_model_measures_what_the_inference_log_needs_so_the_gateway_decodes_nothing(
    running, http, gateway_settings, monkeypatch
):
    """brightness, contrast, sharpness and size come out of the model's graph (real TF Serving
    returns them too), equal to moodloop/core/image_properties.py's definition; the gateway's log
    writer never decodes an image for them."""
    from moodloop.core import log_records
    from moodloop.core.image_properties import image_properties
    from moodloop.core.log_records import read_log

    def no_decoding(*args, **kwargs):
        raise AssertionError("the gateway decoded an image to log it")

    monkeypatch.setattr(log_records, "decode_grey", no_decoding)
    monkeypatch.setattr(log_records, "image_properties", no_decoding)
    faces = [np.random.default_rng(seed).integers(0, 255, (48, 48), dtype=np.uint8) for seed in (21, 22)]
    big = np.kron(faces[0], np.ones((3, 2), np.uint8))  # 144 x 96: measured at 48 x 48, as the log defines
    images = [_encoded(Image.fromarray(faces[1]), "PNG"), _encoded(Image.fromarray(big), "PNG")]
    by_image = http.post("/v1/models/emotion/versions/1:predict", json={"instances": [b64(i) for i in images]})
    pixels = {"signature_name": "serving_pixels", "instances": [faces[0].tolist()]}
    by_pixels = http.post("/v1/models/emotion/versions/1:predict", json=pixels)
    assert by_image.status_code == by_pixels.status_code == 200, by_image.text
    wanted = {by_image.headers["x-request-id"]: [faces[1], big], by_pixels.headers["x-request-id"]: [faces[0]]}
    deadline, rows = time.monotonic() + 20, []
    while time.monotonic() < deadline and len(rows) < 3:
        rows = [r for r in read_log(gateway_settings.inference_log_url).to_pylist() if r["request_id"] in wanted]
        time.sleep(0.5)
    assert len(rows) == 3
    monkeypatch.undo()
    for row in rows:
        sent = wanted[row["request_id"]][row["instance"]]
        expected = image_properties(sent)
        assert (row["height"], row["width"]) == sent.shape
        exact = sent.shape == (48, 48)  # a larger image is resized in the graph, not by PIL: within 1 %
        for name in ("brightness", "contrast", "sharpness"):
            assert row[name] == pytest.approx(expected[name], rel=1e-5 if exact else 0.01, abs=1e-6), name


def test_feedback_attaches_a_label_to_a_request(http):
    response = http.post("/v1/models/emotion:predict", json={"instances": [b64(png(9))]})
    request_id = response.headers["x-request-id"]
    ok = http.post("/v1/feedback", json={"request_id": request_id, "label": "happy"})
    assert ok.status_code == 202
    assert {k: ok.json()[k] for k in ("request_id", "instance", "label")} == {
        "request_id": request_id,
        "instance": 0,
        "label": "happy",
    }
    assert ok.json()["face"]["kept"] is False  # a raw prediction, not an analysed face: only the label is kept
    bad = http.post("/v1/feedback", json={"request_id": request_id, "label": "bored"})
    assert bad.status_code == 400 and "not an emotion" in bad.json()["error"]
    assert http.post("/v1/feedback", json={"label": "happy"}).status_code == 400


def test_corrected_faces_become_a_landing_batch_the_data_contract_reads(running, http, media, monkeypatch, tmp_path):
    """Feedback on analysed faces keeps each face; once N have gathered they are one landing batch
    (images + labels.csv), which the data stage reads like any other; the label is logged too."""
    from data.curated import batch_source
    from data.readers import read_batch
    from moodloop.core.contracts import SYNTHETIC_MARKER
    from moodloop.core.log_records import read_log

    settings = running.dataplane.settings
    corrections = running.dataplane.corrections  # a folder of its own: other tests' corrections stay out
    monkeypatch.setattr(corrections, "per_batch", 3)
    monkeypatch.setattr(corrections, "folder", tmp_path / "corrections")
    monkeypatch.setattr(corrections, "pending_dir", tmp_path / "corrections" / "pending")
    before = set(settings.landing_dir.iterdir()) if settings.landing_dir.exists() else set()
    analysed = http.post("/v1/faces:analyze", content=(media / "multi_face.jpg").read_bytes()).json()
    request_id, corrected = analysed["request_id"], ["sad", "fear", "surprise"]
    answers = []
    for instance, label in enumerate([*corrected[:2], "angry"]):
        answers.append(http.post("/v1/feedback", json={"request_id": request_id, "instance": instance, "label": label}))
    assert [a.json()["face"]["batch_complete"] for a in answers] == [False, False, True]
    deadline = time.monotonic() + 20
    while corrections.counts()["delivered_batches"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)  # delivered in the background: the feedback does not wait for the landing zone
    relabel = http.post("/v1/feedback", json={"request_id": request_id, "instance": 2, "label": "surprise"})
    assert relabel.json()["face"]["corrections"]["pending"] == 1  # a new batch starts
    (batch,) = set(settings.landing_dir.iterdir()) - before
    assert batch.name.startswith("corrections-") and (batch / "_SUCCESS").exists()
    # the data stage will curate its faces as real ones, slice `source=corrections` (the gate guards it)
    assert batch_source(batch.name, synthetic=(batch / SYNTHETIC_MARKER).exists()) == "corrections"
    faces = read_batch(batch)
    assert not faces.rejected
    by_face = {f.source: EMOTIONS[f.label] for f in faces.faces}
    assert by_face == {f"faces/{request_id}-{i}.png": e for i, e in enumerate(["sad", "fear", "angry"])}
    crops = {f.source: f.pixels for f in faces.faces}
    assert all(c.shape == (48, 48) for c in crops.values())
    # who sent each label travels with the batch (the test client's address; no feedback token set)
    assert json.loads((batch / "senders.json").read_text()) == {source: "127.0.0.1" for source in by_face}
    (delivered,) = [
        json.loads(line) for line in (tmp_path / "corrections" / "delivered.jsonl").read_text().splitlines()
    ]
    assert delivered["senders"] == {"127.0.0.1": 3}
    counts = http.get("/v1/panel").json()["corrections"]
    assert counts["delivered_batches"] == 1 and counts["delivered_faces"] == 3 and counts["pending"] == 1
    deadline, logged = time.monotonic() + 20, []
    while time.monotonic() < deadline and len(logged) < 4:  # the log is written in the background
        logged = [
            r for r in read_log(settings.inference_log_url, "feedback").to_pylist() if r["request_id"] == request_id
        ]
        time.sleep(0.5)
    assert sorted((r["instance"], r["label"]) for r in logged) == [
        (0, "sad"),
        (1, "fear"),
        (2, "angry"),
        (2, "surprise"),
    ]


def test_admin_needs_token_and_promote_rollback_serve_every_request(running, http, labels):
    assert http.post("/admin/promote").status_code == 401
    assert http.post("/admin/promote", headers={"Authorization": "Bearer wrong"}).status_code == 401
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    labels(stable=1, canary=2)
    body = {"signature_name": "serving_pixels", "inputs": {"pixels": np.zeros((1, 48, 48), int).tolist()}}
    failures, stop = [], threading.Event()

    def traffic():
        with httpx.Client(base_url=str(http.base_url), timeout=30) as client:
            i = 0
            while not stop.is_set():
                response = client.post("/v1/models/emotion:predict", json=body, headers={"x-client-id": f"c{i}"})
                i += 1
                if response.status_code != 200:
                    failures.append(response.text)

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.5)
        promoted = http.post("/admin/promote", headers=auth)
        assert promoted.status_code == 200 and promoted.json() == {"promoted": 2, "labels": {"stable": 2}}
        time.sleep(0.5)
        labels(canary=1)
        rolled = http.post("/admin/rollback", headers=auth)
        assert rolled.json() == {"rolled_back": 1, "labels": {"stable": 2}}
        time.sleep(0.5)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert failures == []
    assert http.post("/admin/rollback", headers=auth).json()["rolled_back"] is None
    assert http.put("/admin/traffic", headers=auth, json={"canary_share": 2}).status_code == 400


def test_metrics_count_requests_by_version_and_label(http):
    http.post("/v1/models/emotion/versions/1:predict", json={"instances": [b64(png(4))]})
    text = http.get("/metrics").text
    assert 'moodloop_requests_total{api="rest",code="OK",label="",model="emotion",version="1"}' in text
    assert "moodloop_batch_size_bucket" in text and "moodloop_inference_log_dropped" in text
    assert http.get("/monitoring/prometheus/metrics").status_code == 200
    assert http.get("/healthz").json()["ready"] is True


def test_face_answers_name_the_version_that_read_them(http, media, labels, running):
    """Issue 27: with a canary live, one photo may be read by either version; the answer names it
    (as TF Serving's model_spec does), in the JSON and, for annotated media, in headers."""
    from moodloop.core.rollout import choose_label

    labels(stable=1, canary=2)
    share = running.dataplane.traffic.share()
    assert 0 < share < 1
    clients = [f"person-{i}" for i in range(200)]
    on_canary = next(c for c in clients if choose_label(c, {"stable": 1, "canary": 2}, share) == "canary")
    on_stable = next(c for c in clients if choose_label(c, {"stable": 1, "canary": 2}, share) == "stable")
    photo = (media / "multi_face.jpg").read_bytes()
    for client, expected in (
        (on_stable, {"version": 1, "label": "stable"}),
        (on_canary, {"version": 2, "label": "canary"}),
    ):
        result = http.post("/v1/faces:analyze", content=photo, headers={"x-client-id": client}).json()
        assert len(result["faces"]) == 5 and result["model"] == {"name": "emotion", **expected}
        annotated = http.post("/v1/faces:analyze?annotate=1", content=photo, headers={"x-client-id": client})
        assert (annotated.headers["x-model-version"], annotated.headers["x-model-label"]) == (
            str(expected["version"]),
            expected["label"],
        )


def test_faces_in_a_real_group_photo(http, media, gateway_settings):
    assert gateway_settings.serving.face_detector == "mtcnn"  # the default
    photo = (media / "multi_face.jpg").read_bytes()
    response = http.post("/v1/faces:analyze", content=photo, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["width"], result["height"]) == (1000, 667)
    assert len(result["faces"]) == 5  # five people; one wears sunglasses (Haar misses him)
    for face in result["faces"]:
        assert set(face["probabilities"]) == set(EMOTIONS) and face["emotion"] in EMOTIONS
        assert abs(sum(face["probabilities"].values()) - 1) < 0.01
        box = face["box"]
        assert 60 < box["width"] < 200 and 40 < box["y"] < 400
        assert face["uncertain"] is (face["confidence"] < gateway_settings.serving.min_confidence)
        for x, y in (face["landmarks"]["left_eye"], face["landmarks"]["right_eye"]):
            assert box["x"] < x < box["x"] + box["width"] and box["y"] < y < box["y"] + box["height"]
    annotated = http.post("/v1/faces:analyze?annotate=1", files={"file": ("group.jpg", photo, "image/jpeg")})
    assert annotated.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(annotated.content)).size == (1000, 667)
    landscape = http.post("/v1/faces:analyze", content=(media / "free-mountain-vector-01.jpg").read_bytes())
    assert landscape.status_code == 200 and landscape.json()["faces"] == []


def test_faces_explained_with_a_heatmap_over_each_box(http, media):
    photo = (media / "multi_face.jpg").read_bytes()
    plain = http.post("/v1/faces:analyze", content=photo).json()["faces"]
    assert all("heatmap" not in face for face in plain)  # only when asked: it costs a second model call
    explained = http.post("/v1/faces:analyze?explain=1", content=photo)
    assert explained.status_code == 200, explained.text
    faces = explained.json()["faces"]
    assert [f["box"] for f in faces] == [f["box"] for f in plain]
    assert [f["probabilities"] for f in faces] == [f["probabilities"] for f in plain]
    for face in faces:
        overlay = Image.open(io.BytesIO(base64.b64decode(face["heatmap"])))
        assert overlay.mode == "RGBA" and overlay.size == (face["box"]["width"], face["box"]["height"])
        assert np.asarray(overlay)[..., 3].max() > 0  # some part of each face spoke for its emotion


def test_concurrent_photos_get_the_same_faces(running, media):
    # Each worker thread detects with its own detector (neither OpenCV's cascade nor MTCNN is shared).
    photo = (media / "multi_face.jpg").read_bytes()
    results = []

    def ask() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{running.rest_port}", timeout=60) as client:
            results.append(client.post("/v1/faces:analyze", content=photo).json())

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    boxes = [[face["box"] for face in result["faces"]] for result in results]
    assert len(boxes) == 4 and len(boxes[0]) == 5 and all(b == boxes[0] for b in boxes)


def test_faces_bad_uploads_are_refused_clearly(http, media):
    truncated = (media / "single_face.jpg").read_bytes()[:2000]
    response = http.post("/v1/faces:analyze", content=truncated)
    assert response.status_code == 400 and "not a readable image (OSError" in response.json()["error"]
    assert http.post("/v1/faces:analyze", content=b"").json()["error"] == "empty image"
    assert "not a readable image" in http.post("/v1/faces:analyze", content=b"plain text").json()["error"]
    # A decompression bomb: a small PNG that claims 5000 x 5000 pixels (over the 4 Mpx test limit).
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, "PNG")
    bomb = http.post("/v1/faces:analyze", content=buffer.getvalue())
    assert bomb.status_code == 400 and "limit" in bomb.json()["error"]


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _bomb(side: int = 20000) -> bytes:
    """A small PNG declaring side x side pixels (a decompression bomb: ~400 KB for 20000 x 20000)."""
    return _encoded(Image.new("1", (side, side)), "PNG")


def _predict_rest(http, images: list[bytes]) -> httpx.Response:
    return http.post("/v1/models/emotion/versions/1:predict", json={"instances": [b64(i) for i in images]})


def test_predict_refuses_bad_images_before_any_decoder_and_names_the_instance(http, channel):
    good = png(5)
    bomb = _bomb()
    response = _predict_rest(http, [good, bomb])
    assert response.status_code == 400
    assert response.json() == {"error": "instance 1: image is 400000000 pixels; the limit is 4000000"}
    truncated = _predict_rest(http, [png(6)[:60]])
    assert truncated.status_code == 400 and truncated.json()["error"].startswith("instance 0: truncated or corrupt")
    not_image = _predict_rest(http, [good, good, b"plain text"])
    assert not_image.json()["error"] == "instance 2: not a readable image (not a known image format)"
    too_many = _predict_rest(http, [good] * 257)
    assert too_many.status_code == 400 and "the limit is 256 per request" in too_many.json()["error"]
    # gRPC: the same check, TF Serving's status code and the same words.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "emotion"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([good, bomb]))
    with pytest.raises(grpc.RpcError) as refused:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "instance 1: image is 400000000 pixels; the limit is 4000000"


def test_every_format_the_readers_accept_predicts_like_its_grey_png(http):
    """CMYK JPEG, GIF, BMP, WEBP, TIFF, 16-bit, palette and alpha PNGs: the gateway accepts what the
    training readers accept and the model sees the same grey face (moodloop/core/encoded_images.py)."""
    grey = np.kron(np.random.default_rng(8).integers(30, 220, (12, 12)), np.ones((8, 8))).astype(np.uint8)
    plain = Image.fromarray(grey, "L")
    variants = [
        _encoded(plain, "PNG"),
        _encoded(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"),
        _encoded(plain.convert("P"), "PNG"),
        _encoded(plain.convert("LA"), "PNG"),
        _encoded(plain.convert("CMYK"), "JPEG"),
        _encoded(plain, "GIF"),
        _encoded(plain.convert("RGB"), "BMP"),
        _encoded(plain, "TIFF"),
        _encoded(plain.convert("RGB"), "WEBP"),
    ]
    response = _predict_rest(http, variants)
    assert response.status_code == 200, response.text
    probabilities = np.array([p["probabilities"] for p in response.json()["predictions"]])
    np.testing.assert_allclose(probabilities[1:8], np.repeat(probabilities[:1], 7, axis=0), atol=2e-3)
    np.testing.assert_allclose(probabilities[8], probabilities[0], atol=0.05)  # WEBP is lossy


# Six flooding clients in a process of their own (plain http.client, nothing imported): in this
# process they would share the gateway's GIL, and the test would time its own clients.
# They flood until the test creates the stop file (120 s at most), and create `<stop>.started` once
# the first answer came back, so the test's normal requests overlap the flood however slow the machine.
FLOOD_CLIENTS = """
import http.client, json, os, sys, threading, time
port, path, stop_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
body = sys.stdin.buffer.read()
answers, give_up = [], time.monotonic() + 120
def flood():
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not os.path.exists(stop_file) and time.monotonic() < give_up:
        started = time.perf_counter()
        client.request("POST", path, body, {"content-type": "application/json"})
        response = client.getresponse()
        response.read()
        answers.append((response.status, time.perf_counter() - started))
        open(stop_file + ".started", "a").close()
threads = [threading.Thread(target=flood) for _ in range(6)]
for thread in threads: thread.start()
for thread in threads: thread.join()
print(json.dumps(answers))
"""


def test_a_bomb_flood_is_refused_fast_and_normal_requests_are_served_meanwhile(http, running, tmp_path):
    """Six clients each sending 16 images declaring 20000 x 20000 pixels, over and over: the answers
    are 400s, and the gateway spends on each far less CPU than decoding one such image costs (both
    measured in this run as CPU time of this process, where the gateway runs: other processes on a
    loaded machine do not inflate it), and normal requests sent during the flood are served."""
    import subprocess
    import sys

    bomb = _bomb()
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # PIL's own bomb check off, once
    try:
        started, started_cpu = time.perf_counter(), time.process_time()
        with Image.open(io.BytesIO(bomb)) as image:  # what refusing by decoding would cost, per image
            image.convert("L").load()
        one_decode, one_decode_cpu = time.perf_counter() - started, time.process_time() - started_cpu
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    bombs = json.dumps({"instances": [b64(bomb)] * 16}).encode()
    normal = {"instances": [b64(png(7))]}
    path = "/v1/models/emotion/versions/1:predict"
    url = f"http://127.0.0.1:{running.rest_port}{path}"
    with httpx.Client(timeout=30) as quiet:
        quiet.post(url, json=normal)  # warm
        before = [quiet.post(url, json=normal).elapsed.total_seconds() for _ in range(10)]
    stop = tmp_path / "stop"
    flood_cpu = time.process_time()
    flooding = subprocess.Popen(
        [sys.executable, "-c", FLOOD_CLIENTS, str(running.rest_port), path, str(stop)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        flooding.stdin.write(bombs)
        flooding.stdin.close()
        deadline = time.monotonic() + 60
        while not Path(f"{stop}.started").exists():  # the flood is on
            assert time.monotonic() < deadline and flooding.poll() is None, "the flood never got an answer"
            time.sleep(0.05)
        with httpx.Client(timeout=60) as client:
            during = []
            for _ in range(10):
                answer = client.post(url, json=normal)
                assert answer.status_code == 200, answer.text
                during.append(answer.elapsed.total_seconds())
    finally:
        stop.touch()
    flood_answers = json.loads(flooding.stdout.read())
    assert flooding.wait(timeout=120) == 0
    flood_cpu = time.process_time() - flood_cpu  # the gateway's work on the flood (and the 10 normal requests)
    statuses = {status for status, _ in flood_answers}
    seconds = sorted(elapsed for _, elapsed in flood_answers)
    per_answer_cpu = flood_cpu / max(1, len(seconds))
    print(
        f"flood: {len(seconds)} answers, median {1000 * seconds[len(seconds) // 2]:.1f} ms, "
        f"max {1000 * seconds[-1]:.1f} ms, gateway CPU {1000 * per_answer_cpu:.1f} ms per answer; decoding one "
        f"bomb {1000 * one_decode:.0f} ms ({1000 * one_decode_cpu:.0f} ms CPU); normal requests "
        f"{1000 * np.median(before):.1f} ms before, {1000 * np.median(during):.1f} ms during"
    )
    assert statuses == {400} and len(seconds) >= 12
    # Refused from the header: a request of 16 bombs refused by decoding would cost 16 decodes of
    # CPU (four took 2 s before the check), one refused at its first bomb one decode; each answer
    # costs the gateway less than a quarter of one.
    assert per_answer_cpu < one_decode_cpu / 4


def test_a_corrupt_image_fails_only_its_own_request_when_batched_with_others(http, running):
    """Headers fine, data truncated: the model's decoder fails on it. Requests batched with it
    (the embedded backend merges concurrent requests) still get their answers."""
    corrupt = _encoded(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)), "PNG")
    corrupt = corrupt[:-40]  # cut inside the image data, after a valid header
    url = f"http://127.0.0.1:{running.rest_port}/v1/models/emotion/versions/1:predict"
    answers: list[tuple[str, int, str]] = []

    def ask(kind: str, image: bytes) -> None:
        with httpx.Client(timeout=30) as client:
            for _ in range(5):
                response = client.post(url, json={"instances": [b64(image)]})
                answers.append((kind, response.status_code, response.text))

    threads = [threading.Thread(target=ask, args=("good", png(10 + i))) for i in range(4)]
    threads += [threading.Thread(target=ask, args=("corrupt", corrupt)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {status for kind, status, _ in answers if kind == "good"} == {200}
    bad = [text for kind, status, text in answers if kind == "corrupt"]
    assert len(bad) == 10 and all('"instance 0: ' in text for text in bad), bad[:2]


def test_video_becomes_an_emotion_timeline(http, media, gateway_settings):
    response = http.post("/v1/videos:analyze?every=1", content=(media / "single_face.mp4").read_bytes())
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["frames_read"] > 0 and len(result["timeline"]) >= 2
    times = [entry["time"] for entry in result["timeline"]]
    assert times == sorted(times) and times[1] - times[0] == pytest.approx(1.0, abs=0.1)
    with_face = [entry for entry in result["timeline"] if entry["faces"]]
    assert len(with_face) >= len(result["timeline"]) // 2
    assert sum(result["emotion_counts"].values()) == sum(len(e["faces"]) for e in result["timeline"])
    assert http.post("/v1/videos:analyze", content=b"not a video").status_code == 400
    # One person in the clip: one track, followed from the first sampled frame with a face to the last.
    (person,) = result["people"]
    assert {face["person"] for entry in with_face for face in entry["faces"]} == {person["person"]}
    assert person["frames"] == len(with_face) and person["first_seen"] == with_face[0]["time"]
    assert person["dominant_emotion"] in EMOTIONS and sum(person["emotions"].values()) == pytest.approx(1, abs=0.01)
    smoothed = http.post("/v1/videos:analyze?every=1&smooth=3", content=(media / "single_face.mp4").read_bytes())
    assert all(face["smoothed_emotion"] in EMOTIONS for e in smoothed.json()["timeline"] for face in e["faces"])
    as_csv = http.post("/v1/videos:analyze?every=1&format=csv", content=(media / "single_face.mp4").read_bytes())
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert len(as_csv.text.splitlines()) == 1 + len(with_face) and as_csv.text.startswith("time,frame,person,")
    assert http.post("/v1/videos:analyze?smooth=0", content=b"x").status_code == 400

    # One face, one log row: instances count across frames, and the whole clip took one side of the split.
    from moodloop.core.log_records import read_log

    faces = sum(result["emotion_counts"].values())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = [
            r
            for r in read_log(gateway_settings.inference_log_url).to_pylist()
            if r["request_id"] == result["request_id"]
        ]
        if len(rows) == faces:
            break
        time.sleep(0.3)
    assert sorted(r["instance"] for r in rows) == list(range(faces))
    assert len({(r["model_version"], r["model_label"]) for r in rows}) == 1
