"""Thin local runner: build the pipeline from Settings, run it with LocalDagRunner, report.

Progress goes to the console (one line per component); TFX's full log goes to a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

from components.energy import EnergyReading, measured
from components.energy import record as energy_record
from moodloop.core import console
from moodloop.core.contracts import EMOTIONS
from moodloop.core.settings import Settings


@dataclasses.dataclass
class RunOutcome:
    seconds: float
    component_seconds: dict[str, float]
    pushed: bool
    version: str | None
    pushed_path: str | None
    report: dict | None
    report_dir: str | None
    log_file: str
    infra_blessed: bool | None = None  # None: the InfraValidator did not run
    gate: dict | None = None  # the A/B gate's result (gate_report.json)
    gate_dir: str | None = None
    # CPU seconds of this process per component (all its threads): steadier than wall time on a
    # machine whose speed swings (the same fit: 7-11 s wall, 11.6-12.3 s CPU)
    component_cpu_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    component_energy: dict[str, EnergyReading] = dataclasses.field(default_factory=dict)  # components/energy.py

    def total_energy(self) -> EnergyReading:
        return sum(self.component_energy.values(), EnergyReading())


class _Progress:
    """Prints one line as each component starts and ends, with its wall time (and keeps its CPU time).

    Wraps TFX's Launcher.launch, which LocalDagRunner calls once per component. (Its "Component X
    is running" log lines are not reliable: Beam resets absl's verbosity in the middle of a run.)
    """

    def __init__(self, total: int, pipeline_root: Path, carbon_country: str = "USA"):
        self.total = total
        self.pipeline_root = pipeline_root
        self.carbon_country = carbon_country
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.energy: dict[str, EnergyReading] = {}

    @contextlib.contextmanager
    def installed(self):
        from tfx.orchestration.portable import launcher

        original = launcher.Launcher.launch
        progress = self

        def launch(launcher_self):
            node = launcher_self._pipeline_node.node_info.id
            print(f"[{len(progress.seconds) + 1:2d}/{progress.total}] {node} ...", file=sys.stdout, flush=True)
            started, cpu_started = time.monotonic(), time.process_time()
            energy = EnergyReading(method="not measured")
            try:
                with measured(progress.carbon_country) as energy:
                    return original(launcher_self)
            finally:
                progress.seconds[node] = time.monotonic() - started
                progress.cpu_seconds[node] = time.process_time() - cpu_started
                progress.energy[node] = energy
                run_id = launcher_self._pipeline_runtime_spec.pipeline_run_id.field_value.string_value
                with contextlib.suppress(OSError):  # a reading not kept must not fail the component
                    energy_record(progress.pipeline_root, run_id, node, energy)  # the model card sums them
                print(
                    f"        {node} done in {progress.seconds[node]:.1f} s, {energy.joules:.0f} J",
                    file=sys.stdout,
                    flush=True,
                )

        launcher.Launcher.launch = launch
        try:
            yield self
        finally:
            launcher.Launcher.launch = original


def _latest_artifact(store, type_name: str, since_ms: int):
    artifacts = [a for a in store.get_artifacts_by_type(type_name) if a.create_time_since_epoch >= since_ms]
    return max(artifacts, key=lambda a: a.id) if artifacts else None


def run_pipeline(settings: Settings, **train_overrides) -> RunOutcome:
    """Run the whole pipeline once in this process. Raises on a failed component."""
    from ml_metadata.metadata_store import metadata_store
    from tfx import v1 as tfx

    from components.metadata_connection import connection_config
    from components.pipeline import PipelineConfig, create_pipeline

    settings.pipeline_root.mkdir(parents=True, exist_ok=True)
    settings.metadata_path.parent.mkdir(parents=True, exist_ok=True)
    log_dir = settings.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"train-{time.strftime('%Y%m%d-%H%M%S')}.log"

    pipeline = create_pipeline(PipelineConfig.from_settings(settings, **train_overrides))
    progress = _Progress(len(pipeline.components), settings.pipeline_root, settings.carbon_country)
    print(f"pipeline {settings.pipeline_name}: {len(pipeline.components)} components; full log: {log_file}", flush=True)
    start_ms = int(time.time() * 1000) - 1
    started = time.monotonic()
    # TFX's INFO and the libraries' deprecation chatter go to the log file; the console keeps
    # moodloop's progress, the components' own lines, and errors.
    with console.log_to_file(log_file), progress.installed():
        tfx.orchestration.LocalDagRunner().run(pipeline)
    seconds = time.monotonic() - started

    store = metadata_store.MetadataStore(connection_config(settings.metadata_location))
    pushed_model = _latest_artifact(store, "PushedModel", start_ms)
    report_artifact = _latest_artifact(store, "MoodloopModelReport", start_ms)
    infra = _latest_artifact(store, "InfraBlessing", start_ms)
    gate_artifact = _latest_artifact(store, "MoodloopGateReport", start_ms)
    pushed = bool(pushed_model and pushed_model.custom_properties["pushed"].int_value == 1)
    report, report_dir = None, None
    if report_artifact is not None:
        report_dir = report_artifact.uri
        report = json.loads((Path(report_dir) / "report.json").read_text())
    return RunOutcome(
        seconds=seconds,
        component_seconds=progress.seconds,
        pushed=pushed,
        version=pushed_model.custom_properties["pushed_version"].string_value if pushed else None,
        pushed_path=pushed_model.custom_properties["pushed_destination"].string_value if pushed else None,
        report=report,
        report_dir=report_dir,
        log_file=str(log_file),
        infra_blessed=bool(infra.custom_properties["blessed"].int_value) if infra is not None else None,
        gate=json.loads((Path(gate_artifact.uri) / "gate_report.json").read_text()) if gate_artifact else None,
        gate_dir=gate_artifact.uri if gate_artifact else None,
        component_cpu_seconds=progress.cpu_seconds,
        component_energy=progress.energy,
    )


def describe(outcome: RunOutcome) -> str:
    lines = [f"pipeline finished in {outcome.seconds:.0f} s"]
    if outcome.component_energy:
        total = outcome.total_energy()
        top = sorted(outcome.component_energy.items(), key=lambda kv: -kv[1].kwh)[:4]
        lines.append(f"energy: {total.summary()}; most in " + ", ".join(f"{node} {e.joules:.0f} J" for node, e in top))
    report = outcome.report or {}
    if report.get("accuracy") is not None:
        change = report.get("accuracy_change_vs_champion")
        vs = f", {change:+.1%} vs champion" if change is not None else ", no champion yet"
        lines.append(
            f"held-out accuracy: {report['accuracy']:.1%} on {int(report.get('example_count') or 0)} faces{vs}"
        )
        recall = report.get("per_class_recall") or {}
        if recall:
            lines.append("per-class recall: " + ", ".join(f"{e} {recall[e]:.0%}" for e in EMOTIONS if e in recall))
    if report.get("warm_start"):
        warm = report["warm_start"]
        lines.append(f"{'warm start' if warm['warm'] else 'cold start'}: {warm['reason']}")
    hyperparameters = report.get("hyperparameters") or {}
    if hyperparameters.get("tuned"):
        values = ", ".join(f"{k} {v:g}" for k, v in hyperparameters.items() if k != "tuned")
        lines.append(f"hyperparameters from the Tuner: {values}")
    if report.get("calibration"):
        cal = report["calibration"]
        lines.append(
            f"calibration: temperature {cal['temperature']:.2f}; expected calibration error "
            f"{cal['ece_before']:.3f} -> {cal['ece_after']:.3f} on {cal['check_faces']} held-out faces"
        )
    if outcome.gate:
        from components.ab_gate import describe as describe_gate

        lines += describe_gate(outcome.gate)
    if outcome.pushed:
        lines.append(f"BLESSED: pushed version {outcome.version} to {outcome.pushed_path}")
    else:
        reasons = list((outcome.gate or {}).get("reasons") or [])
        if outcome.infra_blessed is False:
            reasons.append("the InfraValidator could not serve the model (see its task log / TFX log)")
        reasons = reasons or report.get("reasons") or ["the candidate was not blessed"]
        lines.append("NOT BLESSED, nothing pushed:")
        lines += [f"  - {r}" for r in reasons]
    for name, path in (report.get("files") or {}).items():
        lines.append(f"{name.replace('_', ' ')}: {path}")
    if outcome.gate_dir:
        lines.append(f"A/B gate report: {outcome.gate_dir}/gate_report.png (and .json)")
        lines.append(f"bias report: {outcome.gate_dir}/bias_report.png (and .json)")
    return "\n".join(lines)
