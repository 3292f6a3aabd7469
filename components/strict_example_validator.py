"""StrictExampleValidator: TFX's ExampleValidator, except that an anomaly stops the run with a
readable reason (TFX's records it and carries on)."""

import os
from typing import Any

from tfx.components.example_validator import executor as example_validator_executor
from tfx.components.example_validator.component import ExampleValidator
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils
from tfx.utils import io_utils


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


class StrictExampleValidator(ExampleValidator):
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(StrictExampleValidatorExecutor)
