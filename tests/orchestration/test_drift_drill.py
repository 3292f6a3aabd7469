"""The drift drill, small: a model trained on clean faces is served; clean windows raise no alarm;
the shift is flagged within two windows and the retrain starts by itself and reaches the A/B gate.
(`bench/drift_drill.py` is the full drill with its goals, healed accuracy included; it prints the
figures. Here the wiring is the subject, so the models are the tests' quick ones.)"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from moodloop.core.contracts import EMOTIONS, LOG_FACES, LOG_FEEDBACK
from moodloop.core.log_records import read_log
from tests.conftest import WIRING

pytestmark = pytest.mark.pipeline

DRILL = Path(__file__).resolve().parents[2] / "bench" / "drift_drill.py"


def _drill_module():
    spec = importlib.util.spec_from_file_location("drift_drill", DRILL)
    drift_drill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drift_drill)
    return drift_drill


def test_a_shift_is_flagged_and_retraining_starts_without_a_person(tmp_path):
    drift_drill = _drill_module()
    args = argparse.Namespace(
        faces=2000, window=200, clean_windows=3, shift_windows=2, shift=drift_drill.SHIFTS["dim"], shift_name="dim"
    )
    figures = drift_drill.drill(args, tmp_path / "home", training=WIRING)
    print(figures)
    assert figures["false_alarms"] == 0
    closest = figures["closest_clean_call"]  # how near a clean window came to an alarm, in numbers
    assert 1 <= closest["window"] <= 3 and closest["drift_share"] < closest["flags_at"]
    assert len(closest["lowest_p"]) == 3 and closest["lowest_p"][0][1] <= closest["lowest_p"][2][1]
    assert figures["windows_to_flag"] in (1, 2)
    assert figures["shifted_accuracy_before"] < figures["clean_accuracy"]  # the shift hurt the served model
    gate = figures["retrain"]["gate"]
    assert gate and gate[0].startswith("A/B gate: "), gate  # the retrain ran and the gate decided
    if figures["retrain"]["pushed_version"]:
        assert figures["seconds_shift_to_new_model_serving"] > 0 and "shifted_accuracy_after" in figures
    assert list((tmp_path / "home" / "monitoring" / "drift").glob("drift-*.html"))


def test_without_a_batch_the_loop_asks_for_labels_and_retrains_on_the_answers(tmp_path):
    """--labels random:N (loop:N is the same path with another choice): no labelled batch lands
    with the shift; the drift job waits for labels, the queue asks for N of the kept live faces,
    the labellers answer them through the Label tab's API, and their batch is curated and
    retrained on."""
    drift_drill = _drill_module()
    args = argparse.Namespace(
        faces=2000,
        window=200,
        clean_windows=1,
        shift_windows=2,
        shift=drift_drill.SHIFTS["dim"],
        shift_name="dim",
        labels="random:40",
        label_pool=200,
    )
    home = tmp_path / "home"
    figures = drift_drill.drill(args, home, training=WIRING)
    print(figures)
    assert figures["windows_to_flag"] in (1, 2)
    labels = figures["labels"]
    assert (labels["mode"], labels["budget"], labels["labelled"]) == ("random", 40, 40)
    assert labels["pool_faces"] >= 200  # the flagged window's faces and the users' after it
    queue = json.loads((home / "labelling" / "queue.json").read_text())
    assert queue["strategy"] == "random" and len(queue["faces"]) == 40  # the strategy asked for, not the default
    answers = [json.loads(line) for line in (home / "labelling" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 40 and all(a["answer"] in EMOTIONS for a in answers)
    (batch,) = (home / "archive").glob("*labelled-*")  # curated: the data contract took it whole
    (newest,) = sorted((home / "curated").glob("span-*"))[-1:]  # as live faces labelled on request
    assert json.loads((newest / "manifest.json").read_text())["faces_from"] == "labelled"
    gate = figures["retrain"]["gate"]
    assert gate and gate[0].startswith("A/B gate: "), gate  # the retrain on the answers reached the gate
    # The kept live faces since the queue's `since` split three ways (components/live_faces.py): the
    # 40 answered (curated), those with a feedback label (the drill's users label a quarter of the
    # flagged window's faces: the A/B gate judges on them) and the rest (self-training's)
    kept = read_log(home / "inference_log", LOG_FACES, since=queue["since"]).to_pandas()
    kept_ids = set(kept["request_id"] + "-" + kept["instance"].astype(str))
    feedback = read_log(home / "inference_log", LOG_FEEDBACK, since=queue["since"]).to_pandas()
    answered = {a["face_id"] for a in answers}
    with_feedback = (set(feedback["request_id"] + "-" + feedback["instance"].astype(str)) & kept_ids) - answered
    assert figures["feedback"]["share"] == 0.25 and with_feedback
    reports = (home / "tfx" / "ABGate" / "report").glob("*/gate_report.json")
    (report,) = sorted(reports, key=lambda path: int(path.parent.name))[-1:]  # the retrain's
    assert json.loads(report.read_text())["bias"]["slices"]["source=feedback"]["faces"] == len(with_feedback)
    # self-training found the kept faces nobody labelled (and only those): at least the queue's pool
    # less the answered and the feedback-labelled, at most every face kept since `since` less those
    # (faces flushed to the log after the queue was filled may count: bounds, not timing)
    runs = (home / "tfx" / "Trainer" / "model_run").glob("*/history.json")
    summaries = sorted(runs, key=lambda path: int(path.parent.name))  # by execution id: the retrain's last
    self_trained = json.loads(summaries[-1].read_text())["self_training"]
    labelled = 40 + len(with_feedback)
    assert labels["pool_faces"] - labelled <= self_trained["unanswered_faces"] <= len(kept_ids) - labelled, (
        self_trained,
        len(kept_ids),
    )
    assert self_trained["pseudo_labelled"] == sum(self_trained["per_class"]) <= self_trained["unanswered_faces"]
