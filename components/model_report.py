"""ModelReportGen: the run's report for people and machines (report.json, plots), from the
Evaluator's metrics, the A/B gate's verdict and the Trainer's summary."""

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact, standard_artifacts

from moodloop.core.contracts import EMOTIONS, FEATURE_SLICES

log = logging.getLogger(__name__)

TRAINING_SUMMARY = "history.json"  # the Trainer's summary in its model_run (components/trainer.py writes it)


class ModelReport(artifact.Artifact):
    """Plots and a JSON summary of one candidate's evaluation."""

    TYPE_NAME = "MoodloopModelReport"


REPORT_JSON = "report.json"
ACCURACY = "sparse_categorical_accuracy"


def _candidate_values(slice_metrics) -> dict[str, float]:
    """The candidate's plain (not per-class, not diff) metrics of one TFMA slice."""
    return {
        kv.key.name: kv.value.double_value.value
        for kv in slice_metrics.metric_keys_and_values
        if kv.key.model_name in ("", "candidate")
        and not kv.key.is_diff
        and not kv.key.sub_key.HasField("class_id")
        and kv.value.HasField("double_value")
    }


def _slice_name(slice_metrics) -> str | None:
    """`skin=dark` for a slice of the `slice` feature (moodloop/core/slices.py), else None."""
    keys = slice_metrics.slice_key.single_slice_keys
    if len(keys) == 1 and keys[0].column == FEATURE_SLICES:
        return keys[0].bytes_value.decode()
    return None


def _metric_maps(evaluation_uri: str) -> tuple[dict, dict, Any, dict]:
    """(overall metrics, per-class recall, overall confusion-matrix proto, per-slice accuracy and
    example count) of the candidate."""
    import tensorflow_model_analysis as tfma

    overall: dict[str, float] = {}
    recall: dict[str, float] = {}
    per_slice: dict[str, dict[str, float]] = {}
    for slice_metrics in tfma.load_metrics(evaluation_uri):
        name = _slice_name(slice_metrics)
        if name is not None:
            values = _candidate_values(slice_metrics)
            per_slice[name] = {"accuracy": values.get(ACCURACY), "example_count": values.get("example_count")}
            continue
        if slice_metrics.slice_key.single_slice_keys:
            continue  # per-label slices stay in TFMA's output
        for kv in slice_metrics.metric_keys_and_values:
            key = kv.key
            if key.model_name not in ("", "candidate") or not kv.value.HasField("double_value"):
                continue
            value = kv.value.double_value.value
            if key.sub_key.HasField("class_id"):
                if key.name == "recall":
                    recall[EMOTIONS[key.sub_key.class_id.value]] = value
            else:
                overall[("diff:" if key.is_diff else "") + key.name] = value
    matrix = None
    for slice_plots in tfma.load_plots(evaluation_uri):
        if slice_plots.slice_key.single_slice_keys:
            continue
        for kv in slice_plots.plot_keys_and_values:
            value = kv.value
            if kv.key.model_name in ("", "candidate") and value.HasField("multi_class_confusion_matrix_at_thresholds"):
                matrix = value.multi_class_confusion_matrix_at_thresholds
    return overall, recall, matrix, dict(sorted(per_slice.items()))


def validation_reasons(evaluation_uri: str) -> tuple[bool, list[str]]:
    """Whether TFMA's thresholds passed, and one readable line per failed threshold."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_validation_result(evaluation_uri)
    reasons = []
    for per_slice in result.metric_validations_per_slice:
        for failure in per_slice.failures:
            key, threshold = failure.metric_key, failure.metric_threshold
            value = failure.metric_value.double_value.value
            if key.is_diff:
                bound = threshold.change_threshold.absolute.value
                reasons.append(
                    f"{key.name} changed by {value:+.4f} against the champion; the allowed change is >= {bound:+.4f}"
                )
            else:
                bound = threshold.value_threshold.lower_bound.value
                reasons.append(f"{key.name} is {value:.4f}; the floor is {bound:.4f}")
    if result.missing_thresholds:
        reasons.append("a threshold could not be evaluated (missing metric or slice; see the evaluation artifact)")
    if not result.validation_ok and not reasons:
        reasons.append(str(result.validation_details) or "validation failed (see the evaluation artifact)")
    return bool(result.validation_ok), reasons


@component
def ModelReportGen(
    evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
    model_run: InputArtifact[standard_artifacts.ModelRun],
    report: OutputArtifact[ModelReport],
) -> None:
    """Training curves, confusion matrix and the verdict with its reasons, in one folder."""

    from components import plots

    overall, recall, matrix_proto, per_slice = _metric_maps(evaluation.uri)
    blessed, reasons = validation_reasons(evaluation.uri)
    os.makedirs(report.uri, exist_ok=True)
    matrix = np.zeros((len(EMOTIONS), len(EMOTIONS)))
    if matrix_proto is not None and matrix_proto.matrices:
        for entry in matrix_proto.matrices[0].entries:
            if 0 <= entry.predicted_class_id < len(EMOTIONS):
                matrix[entry.actual_class_id, entry.predicted_class_id] = entry.num_weighted_examples
    accuracy = overall.get(ACCURACY)
    files = {
        "confusion_matrix": plots.confusion_matrix(
            matrix,
            EMOTIONS,
            os.path.join(report.uri, plots.CONFUSION_MATRIX_PNG),
            title=f"Held-out confusion matrix (accuracy {accuracy:.1%})" if accuracy is not None else "",
        )
    }
    for name, png in (("training_curves", plots.TRAINING_CURVES_PNG), ("reliability_diagram", plots.RELIABILITY_PNG)):
        if os.path.exists(os.path.join(model_run.uri, png)):
            files[name] = shutil.copy(os.path.join(model_run.uri, png), os.path.join(report.uri, png))
    training_path = os.path.join(model_run.uri, TRAINING_SUMMARY)
    training = json.loads(Path(training_path).read_text()) if os.path.exists(training_path) else {}
    calibration = training.get("calibration") or {}
    summary = {
        "accuracy": accuracy,
        "accuracy_change_vs_champion": overall.get("diff:sparse_categorical_accuracy"),
        "example_count": overall.get("example_count"),
        "per_class_recall": recall,
        "per_slice": per_slice,  # TFMA's, per slice value; the A/B gate's bias report pairs them with the champion
        "confusion_matrix": matrix.astype(int).tolist(),
        "class_names": list(EMOTIONS),
        "blessed": blessed,
        "reasons": reasons,
        "warm_start": training.get("warm_start"),
        "trained": training.get("trained"),  # moodloop's CNN, or the champion's own network fine-tuned; why
        "self_training": training.get("self_training"),  # after a drift: the pseudo-labelled kept live faces
        "hyperparameters": training.get("hyperparameters"),
        "calibration": {k: calibration[k] for k in ("temperature", "ece_before", "ece_after", "check_faces")}
        if calibration
        else None,
        "evaluation": evaluation.uri,
        "files": files,
    }
    with open(os.path.join(report.uri, REPORT_JSON), "w") as fh:
        json.dump(summary, fh, indent=1)
    # TFMA's thresholds are reported here; the push decision is the A/B gate's (ABGate task).
    verdict = "TFMA thresholds passed" if blessed else "TFMA thresholds failed: " + "; ".join(reasons)
    log.info(f"held-out accuracy {accuracy}; {verdict}; report in {report.uri}")
