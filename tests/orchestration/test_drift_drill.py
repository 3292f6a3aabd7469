"""The drift drill, small: a model trained on clean faces is served; clean windows raise no alarm;
the shift is flagged within two windows and the retrain starts by itself and reaches the A/B gate.
(`bench/drift_drill.py` is the full drill with its goals, healed accuracy included; it prints the
figures. Here the wiring is the subject, so the models are the tests' quick ones.)"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from tests.conftest import WIRING

pytestmark = pytest.mark.pipeline

DRILL = Path(__file__).resolve().parents[2] / "bench" / "drift_drill.py"


def test_a_shift_is_flagged_and_retraining_starts_without_a_person(tmp_path):
    spec = importlib.util.spec_from_file_location("drift_drill", DRILL)
    drift_drill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drift_drill)
    args = argparse.Namespace(
        faces=2000, window=200, clean_windows=3, shift_windows=2, shift=drift_drill.SHIFTS["dim"], shift_name="dim"
    )
    figures = drift_drill.drill(args, tmp_path / "home", training=WIRING)
    print(figures)
    assert figures["false_alarms"] == 0
    assert figures["windows_to_flag"] in (1, 2)
    assert figures["shifted_accuracy_before"] < figures["clean_accuracy"]  # the shift hurt the served model
    gate = figures["retrain"]["gate"]
    assert gate and gate[0].startswith("A/B gate: "), gate  # the retrain ran and the gate decided
    if figures["retrain"]["pushed_version"]:
        assert figures["seconds_shift_to_new_model_serving"] > 0 and "shifted_accuracy_after" in figures
    assert list((tmp_path / "home" / "monitoring" / "drift").glob("drift-*.html"))
