"""moodloop's own TFX pieces: a strict ExampleValidator, an atomic Pusher, a span resolver and
the model report component."""

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from tfx import v1 as tfx
from tfx.components.example_validator import executor as example_validator_executor
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact, artifact_utils, standard_artifacts
from tfx.utils import io_utils

from moodloop.contracts import EMOTIONS

# ---------------------------------------------------------------- ExampleValidator that stops


class DataAnomaliesError(RuntimeError):
    """The new span breaks the curated schema; the message says how, one line per feature."""


def describe_anomalies(anomalies: Any) -> list[str]:
    lines = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        reasons = "; ".join(r.description or r.short_description for r in info.reason) or info.description
        lines.append(f"feature '{feature}': {reasons}")
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        lines.append("dataset: " + ("; ".join(r.description for r in info.reason) or info.description))
    return lines


class StrictExampleValidatorExecutor(example_validator_executor.Executor):
    """TFX's ExampleValidator records anomalies and carries on; here an anomaly fails the run
    with a readable reason, so Transform and Trainer never see data that breaks the schema."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        super().Do(input_dict, output_dict, exec_properties)
        from tensorflow_metadata.proto.v0 import anomalies_pb2

        artifact = artifact_utils.get_single_instance(output_dict["anomalies"])
        problems = []
        for split in artifact_utils.decode_split_names(artifact.split_names):
            path = os.path.join(artifact_utils.get_split_uri([artifact], split), "SchemaDiff.pb")
            anomalies = anomalies_pb2.Anomalies()
            anomalies.ParseFromString(io_utils.read_bytes_file(path))
            problems += [f"[{split}] {line}" for line in describe_anomalies(anomalies)]
        if problems:
            raise DataAnomaliesError(
                "the new span does not match the curated schema (data/schema/schema.pbtxt):\n  " + "\n  ".join(problems)
            )


class StrictExampleValidator(tfx.components.ExampleValidator):
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(StrictExampleValidatorExecutor)


# ---------------------------------------------------------------- Pusher that never half-writes


class AtomicPusherExecutor(pusher_executor.Executor):
    """Push by copying to a hidden staging folder beside the version, then one rename.

    TF Serving (and the embedded backend) poll the base path for numeric folders; TFX's own
    Pusher copies file by file into the numeric folder, so a poller can see a half-written
    version. A rename within one filesystem is atomic. Other filesystems (gs://, s3://) fall
    back to TFX's behaviour, which at least writes saved_model.pb last.
    """

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        destination = tfx.proto.PushDestination()
        from tfx.utils import proto_utils

        proto_utils.json_to_proto(exec_properties["push_destination"], destination)
        base = destination.filesystem.base_directory
        if "://" in base:
            return super().Do(input_dict, output_dict, exec_properties)

        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict["pushed_model"])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        os.makedirs(base, exist_ok=True)
        version = int(time.time())
        while os.path.exists(os.path.join(base, str(version))):
            version += 1  # two pushes in one second must not collide
        final = os.path.join(base, str(version))
        staging = os.path.join(base, f".incoming-{version}-{uuid.uuid4().hex[:8]}")
        shutil.copytree(model_path, staging)
        _add_reference_profile(input_dict, staging)
        os.replace(staging, final)
        print(f"pushed model version {version} to {final}", flush=True)
        label_pushed_version(json.loads(exec_properties.get("custom_config") or "null") or {}, base, version)
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=final, pushed_version=str(version))


def _add_reference_profile(input_dict, model_dir: str) -> None:
    """The A/B gate's reference profile goes into the version folder (the model contract's REFERENCE_PROFILE):
    the drift jobs find the served model's reference beside it."""
    from moodloop.contracts import REFERENCE_PROFILE

    for blessing in input_dict.get("model_blessing", []):
        profile = blessing.get_string_custom_property("reference_profile")
        if profile and os.path.exists(profile):
            os.makedirs(os.path.dirname(os.path.join(model_dir, REFERENCE_PROFILE)), exist_ok=True)
            shutil.copy(profile, os.path.join(model_dir, REFERENCE_PROFILE))


def label_pushed_version(config: dict, model_base: str, version: int) -> str | None:
    """Push as canary: the new version gets the `canary` label and the configured traffic share;
    `stable` stays where it is. The first model of a model base becomes `stable` directly.
    Returns the label given (None when no models.config is configured)."""
    if not config.get("serving_config"):
        return None
    from pathlib import Path

    from moodloop.rollout import STABLE, Rollout

    rollout = Rollout(
        Path(config["serving_config"]),
        config.get("model_name", "emotion"),
        float(config.get("canary_share", 0.1)),
        Path(config["traffic_file"]) if config.get("traffic_file") else None,
    )
    label = rollout.label_new_version(
        version, Path(model_base), lambda v: _wait_until_served(config.get("status_url", ""), v)
    )
    if label == STABLE:
        print(f"version {version} is the first model: labelled {STABLE} in {rollout.serving_config}", flush=True)
    else:
        print(
            f"version {version} labelled {label} ({rollout.initial_share:.0%} of traffic); "
            f"{STABLE} stays on version {rollout.labels()[STABLE]} ({rollout.serving_config})",
            flush=True,
        )
    return label


def _wait_until_served(status_url: str, version: int, timeout: float = 120.0) -> None:
    """Poll TF Serving's REST status (the gateway's or TF Serving's own) until `version` is AVAILABLE.
    No server answering means nobody serves the old label either: go on at once."""
    import urllib.error
    import urllib.request

    if not status_url:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{status_url}/versions/{version}", timeout=5) as response:
                if b'"AVAILABLE"' in response.read():
                    return
        except urllib.error.HTTPError:
            pass  # 404 while the server has not loaded it yet
        except OSError:
            return
        time.sleep(1)
    print(f"warning: version {version} not AVAILABLE after {timeout:.0f} s; labelling it anyway", flush=True)


# ---------------------------------------------------------------- one Examples artifact per span


def _int_property(item: Any, name: str) -> int:
    return item.get_int_custom_property(name) if item.has_custom_property(name) else 0


class LatestVersionPerSpanStrategy(tfx.dsl.experimental.ResolverStrategy):
    """All spans (or the newest `num_spans`), one Examples artifact each: the newest one.

    TFX's SpanRangeStrategy returns every artifact in range, so a re-run of ExampleGen over an
    unchanged span would count its faces twice in training.
    """

    def __init__(self, num_spans: int = 0):
        self._num_spans = int(num_spans)

    def resolve_artifacts(self, store, input_dict):
        result = {}
        for key, artifacts in input_dict.items():
            newest: dict[int, Any] = {}
            for candidate in artifacts:
                span = _int_property(candidate, "span")
                current = newest.get(span)
                if current is None or (_int_property(candidate, "version"), candidate.id) > (
                    _int_property(current, "version"),
                    current.id,
                ):
                    newest[span] = candidate
            spans = sorted(newest, reverse=True)
            if self._num_spans > 0:
                spans = spans[: self._num_spans]
            result[key] = [newest[s] for s in spans]
        return result


# ---------------------------------------------------------------- model report


class ModelReport(artifact.Artifact):
    """Plots and a JSON summary of one candidate's evaluation."""

    TYPE_NAME = "MoodloopModelReport"


REPORT_JSON = "report.json"


def _metric_maps(evaluation_uri: str) -> tuple[dict, dict, Any]:
    """(overall metrics, per-class recall, overall confusion-matrix proto) of the candidate."""
    import tensorflow_model_analysis as tfma

    overall: dict[str, float] = {}
    recall: dict[str, float] = {}
    for slice_metrics in tfma.load_metrics(evaluation_uri):
        if slice_metrics.slice_key.single_slice_keys:
            continue  # only the overall slice here; per-label slices stay in TFMA's output
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
    return overall, recall, matrix


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


@tfx.dsl.components.component
def ModelReportGen(
    evaluation: tfx.dsl.components.InputArtifact[standard_artifacts.ModelEvaluation],
    model_run: tfx.dsl.components.InputArtifact[standard_artifacts.ModelRun],
    report: tfx.dsl.components.OutputArtifact[ModelReport],
) -> None:
    """Training curves, confusion matrix and the verdict with its reasons, in one folder."""
    import numpy as np

    from components import plots

    overall, recall, matrix_proto = _metric_maps(evaluation.uri)
    blessed, reasons = validation_reasons(evaluation.uri)
    os.makedirs(report.uri, exist_ok=True)
    matrix = np.zeros((len(EMOTIONS), len(EMOTIONS)))
    if matrix_proto is not None and matrix_proto.matrices:
        for entry in matrix_proto.matrices[0].entries:
            if 0 <= entry.predicted_class_id < len(EMOTIONS):
                matrix[entry.actual_class_id, entry.predicted_class_id] = entry.num_weighted_examples
    accuracy = overall.get("sparse_categorical_accuracy")
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
    training_path = os.path.join(model_run.uri, "history.json")  # the Trainer's summary (components/module.py)
    training = json.loads(Path(training_path).read_text()) if os.path.exists(training_path) else {}
    calibration = training.get("calibration") or {}
    summary = {
        "accuracy": accuracy,
        "accuracy_change_vs_champion": overall.get("diff:sparse_categorical_accuracy"),
        "example_count": overall.get("example_count"),
        "per_class_recall": recall,
        "confusion_matrix": matrix.astype(int).tolist(),
        "class_names": list(EMOTIONS),
        "blessed": blessed,
        "reasons": reasons,
        "warm_start": training.get("warm_start"),
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
    print(f"held-out accuracy {accuracy}; {verdict}; report in {report.uri}", flush=True)
