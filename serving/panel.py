"""The faces page's model panel: what serves (versions, `stable` / `canary`, the canary's share),
the latest A/B gate verdict, drift verdict and canary decision (the status contract,
moodloop/core/status.py), the corrections gathered for the next landing batch and the labelling
queue. Transport-free,
like the data plane."""

from __future__ import annotations

from pathlib import Path

from moodloop.core import status
from serving.backends import ServingError
from serving.dataplane import DataPlane

GATE_IMAGE_PATH = "/v1/panel/gate.png"
BIAS_IMAGE_PATH = "/v1/panel/bias.png"
DRIFT_REPORT_PATH = "/v1/panel/drift.html"


def model_panel(dataplane: DataPlane) -> dict:
    settings = dataplane.settings
    model = settings.model_name
    labels = dataplane.labels(model)
    try:
        states = dataplane.model_status(model, None, None)
    except ServingError as error:  # no version yet: the panel says so instead of failing
        states, waiting = [], error.message
    else:
        waiting = "" if states else "no model version yet"
    versions = [
        {
            "version": state.version,
            "state": state.state,
            "labels": sorted(label for label, version in labels.items() if version == state.version),
            **({"error": state.error} if state.error else {}),
        }
        for state in sorted(states, key=lambda s: -s.version)
    ]
    gate = status.read_status(settings.status_dir, status.GATE)
    if gate is not None and status.status_file(settings.status_dir, status.GATE_IMAGE):
        gate["image"] = GATE_IMAGE_PATH
    if gate is not None and status.status_file(settings.status_dir, status.BIAS_IMAGE):
        gate["bias_image"] = BIAS_IMAGE_PATH
    drift = status.read_status(settings.status_dir, status.DRIFT)
    if drift is not None:  # the link only when this verdict came with its own report
        has_report = drift.get("report") and status.status_file(settings.status_dir, status.DRIFT_REPORT)
        drift["report"] = DRIFT_REPORT_PATH if has_report else None
    canary = status.read_status(settings.status_dir, status.CANARY)  # monitoring/canary.py's latest decision
    return {
        "model": model,
        "versions": versions,
        "waiting": waiting,
        "labels": labels,
        "canary_share": dataplane.traffic_share() if "canary" in labels else 0.0,
        "gate": gate,
        "drift": drift,
        "canary": canary,
        "evidently_ui": f"http://127.0.0.1:{settings.drift.evidently_port}",
        "corrections": dataplane.corrections.counts(),
        "labelling": dataplane.labelling.summary(),
        "face_detector": dataplane.face_detector,
        "min_confidence": settings.serving.min_confidence,
    }


def panel_file(dataplane: DataPlane, name: str) -> Path | None:
    """The gate's picture or the drift report, if there is one yet."""
    return status.status_file(dataplane.settings.status_dir, name)
