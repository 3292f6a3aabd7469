"""What the pipeline publishes beside a version, found by version or label: the edge models for
devices (the TFLite files of `<version>/assets.extra/edge/`, with edge.json) and the model card
(`assets.extra/model_card.html|json`). Read from the model base path on disk, so the gateway
serves them in front of either backend.

Where the files are and what edge.json holds is the model contract's; this module only looks
them up (moodloop's stages meet through contracts: the serving stage does not import components)."""

from __future__ import annotations

import json
from pathlib import Path

from moodloop.core import models_config
from moodloop.core.contracts import EDGE_DIR, EDGE_METADATA, MODEL_CARD_HTML, MODEL_CARD_JSON
from moodloop.core.rollout import champion_version
from serving.backends import ServingError
from serving.dataplane import DataPlane


def published_edge_file(version_dir: Path, name: str) -> Path:
    """A file edge.json lists as published (so no path leaves the folder); LookupError says why not."""
    metadata = version_dir / EDGE_DIR / EDGE_METADATA
    if not metadata.is_file():
        raise LookupError(
            f"version {version_dir.name} has no edge files (the EdgeExporter publishes them after a pipeline push; "
            "a file that failed its parity gate is not published)"
        )
    published = json.loads(metadata.read_text())
    if name not in published["files"]:
        refused = published.get("not_published", {}).get(name.removesuffix(".tflite"))
        if refused:
            raise LookupError(f"{name} of version {version_dir.name} was not published: {'; '.join(refused)}")
        raise LookupError(f"no edge file {name!r}; published: {', '.join(published['files']) or 'none'}")
    return version_dir / EDGE_DIR / name


def version_folder(dataplane: DataPlane, model: str, version: int | None, label: str | None) -> tuple[int, Path]:
    """(version, its folder): by number, by label, or with neither `stable` (else the newest)."""
    settings = dataplane.settings
    if model != settings.model_name:
        raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({model})")
    if version is None:
        labels = dataplane.labels(model)
        if label is not None and label not in labels:
            raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
        version = labels[label] if label is not None else champion_version(settings.model_base, labels)
        if version is None:
            raise ServingError("NOT_FOUND", f"no version of {model} yet")
    return version, models_config.version_path(settings.model_base, version)


def edge_folder(dataplane: DataPlane, model: str, version: int | None, label: str | None) -> tuple[int, Path]:
    """(version, its edge folder); NOT_FOUND with the reason when there is none."""
    version, folder = version_folder(dataplane, model, version, label)
    if not (folder / EDGE_DIR / EDGE_METADATA).is_file():
        raise ServingError(
            "NOT_FOUND",
            f"version {version} of {model} has no edge files (the EdgeExporter publishes them after the push; "
            "a file that failed its parity gate is not published)",
        )
    return version, folder / EDGE_DIR


def edge_metadata(dataplane: DataPlane, model: str, version: int | None, label: str | None, base_url: str) -> dict:
    served_version, folder = edge_folder(dataplane, model, version, label)
    metadata = json.loads((folder / EDGE_METADATA).read_text())
    for name, spec in metadata["files"].items():
        spec["url"] = f"{base_url}/v1/models/{model}/versions/{served_version}/edge/{name}"
    return {"model": model, "version": served_version, **({"label": label} if label else {}), **metadata}


def edge_file(dataplane: DataPlane, model: str, version: int | None, label: str | None, name: str) -> Path:
    """A published file by name: only what edge.json lists (so no path leaves the folder)."""
    _, folder = version_folder(dataplane, model, version, label)
    try:
        return published_edge_file(folder, name)
    except LookupError as error:
        raise ServingError("NOT_FOUND", str(error)) from None


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
