"""Running a Great Expectations suite on a pandas frame, once, in an ephemeral context (GX 1.x).
Shared by the landing-batch contract and the inference-log quality checks."""

from __future__ import annotations

from typing import Any

import pandas as pd


def run_suite(
    name: str, frame: pd.DataFrame, expectations: list[tuple[Any, str]], index_column: str
) -> tuple[bool, list[dict[str, Any]], dict[str, Any]]:
    """-> (passed, one failure per broken expectation with its meaning and offending index values,
    GX's own validation result as JSON). `expectations` pairs each expectation with what it means."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # tqdm bars in an Airflow task log or a drill's output are noise: one line per check is enough.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_pandas(name).add_dataframe_asset("frame").add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    meaning = {}
    for expectation, text in expectations:
        suite.add_expectation(expectation)
        meaning[expectation.id] = text
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}_run", data=batch_definition, suite=suite)
    )
    run = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [index_column]},
    )
    failures = []
    for outcome in run.results:
        if outcome.success:
            continue
        details = outcome.result or {}
        failures.append(
            {
                "expectation": outcome.expectation_config.type,
                "column": outcome.expectation_config.kwargs.get("column"),
                "meaning": meaning.get(outcome.expectation_config.id, outcome.expectation_config.type),
                "unexpected_count": details.get("unexpected_count", details.get("observed_value")),
                "index": [
                    row[index_column] for row in details.get("unexpected_index_list") or [] if index_column in row
                ],
            }
        )
    return bool(run.success), failures, run.to_json_dict()
