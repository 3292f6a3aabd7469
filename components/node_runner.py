"""Run one TFX component per process: how Airflow runs the pipeline, one task per component.

  python -m components.node_runner compile --run-id RUN [--conf JSON]   # once per run
  python -m components.node_runner run --run-id RUN --node Trainer      # one per component
  python -m components.node_runner nodes                                # topology as JSON

TFX's AirflowDagRunner cannot run on Airflow 3 (it imports airflow.operators.python_operator,
and TFX and Airflow 3 cannot share an environment), so this does per node what LocalDagRunner
does in its loop: substitute the run id into the compiled IR, then Launcher(...).launch(), with
every task of a run sharing one IR file and one ML Metadata store. Launcher does not raise when
a node's inputs are missing, so ML Metadata is checked after the launch; it is also checked
before, so a retried or cleared task skips a component that already completed in this run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from components.energy import measured
from components.energy import record as energy_record
from moodloop.core import console
from moodloop.core.files import atomic_write_bytes, path_safe
from moodloop.core.settings import REPO_ROOT, Settings, TrainingSettings

console.quiet_console()  # before TensorFlow is imported (see moodloop/core/console.py)

NODES_FILE = REPO_ROOT / "components" / "pipeline_nodes.json"
# A run's conf may set any training setting by its field name (epochs, model_size, warm_start, tune, ...).
TRAIN_CONF_KEYS = tuple(f.name for f in dataclasses.fields(TrainingSettings))
# Components the DAG always has a task for but a run may leave out (the Tuner: MOODLOOP_TUNE or conf "tune").
OPTIONAL_NODES = ("Tuner",)


def run_dir(settings: Settings, run_id: str) -> Path:
    return settings.pipeline_root / "airflow_runs" / path_safe(run_id)


def _compiled(settings: Settings, conf: dict):
    from tfx.dsl.compiler import compiler

    from components.metadata_connection import redacted
    from components.pipeline import PipelineConfig, create_pipeline

    overrides = {k: conf[k] for k in TRAIN_CONF_KEYS if conf.get(k) is not None}
    config = PipelineConfig.from_settings(settings, **overrides)
    # The IR is a file on shared storage: it names the metadata database without its password
    # (each task connects with the password from its own settings, see run_node).
    config = dataclasses.replace(config, metadata_location=redacted(config.metadata_location))
    return compiler.Compiler().compile(create_pipeline(config))


def topology(ir) -> list[dict]:
    return [
        {"id": node.pipeline_node.node_info.id, "upstream": sorted(node.pipeline_node.upstream_nodes)}
        for node in ir.nodes
    ]


def compile_run(settings: Settings, run_id: str, conf: dict) -> Path:
    """Compile the pipeline for this run once; retries and later tasks reuse the same IR."""
    path = run_dir(settings, run_id) / "pipeline_ir.pb"
    if path.exists():
        print(f"pipeline IR for run {run_id} already compiled: {path}")
        return path
    ir = _compiled(settings, conf)
    atomic_write_bytes(path, ir.SerializeToString())
    (path.parent / "conf.json").write_text(json.dumps({"run_id": run_id, "conf": conf}, indent=1))
    # Plain JSON: a task can tell it has nothing to do without importing TFX.
    (path.parent / "nodes.json").write_text(json.dumps([n.pipeline_node.node_info.id for n in ir.nodes]))
    print(f"compiled {len(ir.nodes)} components for run {run_id} -> {path}")
    print(f"run conf: {json.dumps(conf)}")
    return path


def _load_ir(settings: Settings, run_id: str):
    from tfx.proto.orchestration import pipeline_pb2

    path = run_dir(settings, run_id) / "pipeline_ir.pb"
    if not path.exists():
        raise SystemExit(f"error: no compiled pipeline for run {run_id} at {path}; run the compile task first")
    ir = pipeline_pb2.Pipeline()
    ir.ParseFromString(path.read_bytes())
    return ir


def _node_executions(mlmd, pipeline_name: str, run_id: str, node_id: str) -> list:
    from tfx.orchestration.portable.mlmd import execution_lib

    run_context = mlmd.store.get_context_by_type_and_name("pipeline_run", run_id)
    node_context = mlmd.store.get_context_by_type_and_name("node", f"{pipeline_name}.{node_id}")
    if run_context is None or node_context is None:
        return []
    return execution_lib.get_executions_associated_with_all_contexts(mlmd, [run_context, node_context])


def _state_name(execution) -> str:
    from ml_metadata.proto import metadata_store_pb2

    return metadata_store_pb2.Execution.State.Name(execution.last_known_state)


def run_node(settings: Settings, run_id: str, node_id: str) -> int:
    from ml_metadata.proto import metadata_store_pb2
    from tfx.dsl.compiler import constants
    from tfx.orchestration import metadata
    from tfx.orchestration.local import runner_utils
    from tfx.orchestration.portable import launcher, runtime_parameter_utils

    from components.metadata_connection import connection_config

    ir = _load_ir(settings, run_id)
    runtime_parameter_utils.substitute_runtime_parameter(ir, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: run_id})
    deployment = runner_utils.extract_local_deployment_config(ir)
    connection = connection_config(settings.metadata_location)  # with its password, which the IR lacks
    nodes = {n.pipeline_node.node_info.id: n.pipeline_node for n in ir.nodes}
    if node_id not in nodes:
        raise SystemExit(f"error: no component {node_id!r} in this pipeline; components: {', '.join(nodes)}")
    node = nodes[node_id]
    pipeline_name = ir.pipeline_info.id
    done = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)

    with metadata.Metadata(connection) as mlmd:
        earlier = _node_executions(mlmd, pipeline_name, run_id, node_id)
    if any(e.last_known_state in done for e in earlier):
        print(f"{node_id} already completed in run {run_id}: skipping (nothing is redone)")
        return 0
    if earlier:
        print(f"{node_id}: {len(earlier)} earlier attempt(s) in this run ({_state_name(earlier[-1])}); running again")

    print(f"{node_id}: running (run {run_id})", flush=True)
    started = time.monotonic()
    with measured(settings.carbon_country) as energy:
        launcher.Launcher(
            pipeline_node=node,
            mlmd_connection=metadata.Metadata(connection),
            pipeline_info=ir.pipeline_info,
            pipeline_runtime_spec=ir.runtime_spec,
            executor_spec=runner_utils.extract_executor_spec(deployment, node_id),
            custom_driver_spec=runner_utils.extract_custom_driver_spec(deployment, node_id),
        ).launch()
    print(f"{node_id}: energy {energy.summary()}", flush=True)
    energy_record(settings.pipeline_root, run_id, node_id, energy)  # the run's total is their sum (model card)

    with metadata.Metadata(connection) as mlmd:
        executions = _node_executions(mlmd, pipeline_name, run_id, node_id)
    if not executions or executions[-1].last_known_state not in done:
        state = _state_name(executions[-1]) if executions else "no execution recorded"
        print(f"error: {node_id} did not complete ({state}); its inputs may be missing", file=sys.stderr)
        return 1
    print(f"{node_id}: done in {time.monotonic() - started:.1f} s", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.node_runner", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compile", help="compile the pipeline for a run (once; retries reuse it)")
    p.add_argument("--run-id", required=True)
    p.add_argument("--conf", default="{}", help=f"JSON run conf; keys used: {', '.join(TRAIN_CONF_KEYS)}")
    p = sub.add_parser("run", help="run one component of a compiled run")
    p.add_argument("--run-id", required=True)
    p.add_argument("--node", required=True, help="component id, e.g. Trainer")
    sub.add_parser("nodes", help="print the components and their upstream components as JSON")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    if args.command == "nodes":  # every component a run can have: the Airflow DAG's tasks
        print(json.dumps(topology(_compiled(settings, {"tune": True})), indent=1))
        return 0
    if args.command == "compile":
        compile_run(settings, args.run_id, json.loads(args.conf or "{}") or {})
        return 0
    compiled = run_dir(settings, args.run_id) / "nodes.json"
    if args.node in OPTIONAL_NODES and compiled.exists() and args.node not in json.loads(compiled.read_text()):
        print(f'{args.node}: not in this run\'s pipeline (MOODLOOP_TUNE=0 and no conf "tune": true); nothing to do')
        return 0
    # Imports TensorFlow (~8 s on 2 cores): only once the node has work, not before the check above
    # (a left-out Tuner took 9 s of every run's critical path to say "nothing to do").
    from components.strict_example_validator import DataAnomaliesError

    log_file = run_dir(settings, args.run_id) / f"{args.node}.log"
    print(f"{args.node}: full TFX log in {log_file}", flush=True)
    try:
        with console.log_to_file(log_file):
            return run_node(settings, args.run_id, args.node)
    except DataAnomaliesError as exc:
        print(f"error: data validation stopped the run: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    code = main()
    # Everything is committed to ML Metadata and the artifact folders by now; TensorFlow's and
    # Beam's interpreter teardown would add ~9 s to every Airflow task, so skip it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
