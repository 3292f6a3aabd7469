"""What the pipeline publishes beside a version, found by version or label: the edge models for
devices (the TFLite files of `<version>/assets.extra/edge/`, with edge.json) and the model card
(`assets.extra/model_card.html|json`). Read from the model base path on disk, so the gateway
serves them in front of either backend.

Where the files are and what edge.json holds is the model contract's; this module only looks
them up (moodloop's stages meet through contracts: the serving stage does not import components)."""

from __future__ import annotations

import json
from pathlib import Path

from moodloop import models_config
from moodloop.contracts import EDGE_DIR, EDGE_METADATA, MODEL_CARD_HTML, MODEL_CARD_JSON
from serving.backends import ServingError
from serving.dataplane import DataPlane


def version_folder(dataplane: DataPlane, model: str, version: int | None, label: str | None) -> tuple[int, Path]:
    """(version, its folder): by number, by label, or with neither `stable` (else the newest)."""
    settings = dataplane.settings
    if model != settings.model_name:
        raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({model})")
    if version is None:
        labels = dataplane.backend.labels(model)
        if label is not None and label not in labels:
            raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
        # No label asked: what users get, `stable` (else the newest version), as `moodloop live` picks.
        version = labels.get(label or "stable")
        if version is None:
            on_disk = models_config.version_folders(Path(settings.model_base))
            if not on_disk:
                raise ServingError("NOT_FOUND", f"no version of {model} yet")
            version = on_disk[-1]
    return version, Path(settings.model_base) / str(version)


def edge_folder(dataplane: DataPlane, model: str, version: int | None, label: str | None) -> tuple[int, Path]:
    """(version, its edge folder); NOT_FOUND with the reason when there is none."""
    version, folder = version_folder(dataplane, model, version, label)
    folder = folder / EDGE_DIR
    if not (folder / EDGE_METADATA).is_file():
        raise ServingError(
            "NOT_FOUND",
            f"version {version} of {model} has no edge files (the EdgeExporter publishes them after the push; "
            "a file that failed its parity gate is not published)",
        )
    return version, folder


def edge_metadata(dataplane: DataPlane, model: str, version: int | None, label: str | None, base_url: str) -> dict:
    served_version, folder = edge_folder(dataplane, model, version, label)
    metadata = json.loads((folder / EDGE_METADATA).read_text())
    for name, spec in metadata["files"].items():
        spec["url"] = f"{base_url}/v1/models/{model}/versions/{served_version}/edge/{name}"
    return {"model": model, "version": served_version, **({"label": label} if label else {}), **metadata}


def edge_file(dataplane: DataPlane, model: str, version: int | None, label: str | None, name: str) -> Path:
    """A published file by name: only what edge.json lists (so no path leaves the folder)."""
    _, folder = edge_folder(dataplane, model, version, label)
    listed = json.loads((folder / EDGE_METADATA).read_text())["files"]
    if name not in listed:
        raise ServingError("NOT_FOUND", f"no edge file {name!r}; published: {', '.join(listed) or 'none'}")
    return folder / name


def model_card(dataplane: DataPlane, model: str, version: int | None, label: str | None, as_json: bool) -> Path:
    """The version's model card (HTML, or JSON), written by the pipeline's ModelCardGen."""
    served_version, folder = version_folder(dataplane, model, version, label)
    path = folder / (MODEL_CARD_JSON if as_json else MODEL_CARD_HTML)
    if not path.is_file():
        raise ServingError(
            "NOT_FOUND",
            f"version {served_version} of {model} has no model card (the pipeline writes one for each version "
            "it pushes; adopted and older versions have none)",
        )
    return path
