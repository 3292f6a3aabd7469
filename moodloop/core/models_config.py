"""TF Serving's `models.config` (ModelServerConfig, text format): read, change labels, write atomically.

TF Serving re-polls this file (--model_config_file_poll_wait_seconds) and the embedded backend
re-reads it, so moving a label here is how a canary is promoted or rolled back everywhere.
TF Serving only accepts a label that points at a loaded version, so labelling switches the version
policy to `specific` with every labelled version in it (and the version being labelled is loaded
before the label moves: no request meets an unloaded version).
"""

from __future__ import annotations

import contextlib
import fcntl
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from moodloop.core.contracts import CANARY, STABLE
from moodloop.core.files import atomic_write_text


@dataclass(frozen=True)
class ModelPolicy:
    """One model's entry: where its versions are and which of them should be loaded."""

    name: str
    base_path: Path
    policy: str = "latest"  # latest | all | specific (TF Serving's ServableVersionPolicy)
    latest: int = 1
    specific: tuple[int, ...] = ()
    labels: dict[str, int] = field(default_factory=dict)

    def wanted(self, available: list[int]) -> list[int]:
        """The versions TF Serving would load out of those on disk."""
        ordered = sorted(available)
        if self.policy == "all":
            return ordered
        if self.policy == "specific":
            return [v for v in ordered if v in self.specific]
        return ordered[-self.latest :] if self.latest > 0 else []


def version_paths(base_path: Path) -> dict[int, Path]:
    """{version: folder} of the versions under `base_path`, as TF Serving reads them: a folder whose
    name is a whole number holds that version (`00000123` is version 123, as in TF Serving's own
    test models; of two spellings of one number the first in name order wins), other folders are
    ignored. Hidden staging folders of atomic pushes, and versions still being copied (no
    saved_model.pb yet), are not versions."""
    base_path = Path(base_path)
    if not base_path.is_dir():
        return {}
    found: dict[int, Path] = {}
    for folder in sorted(base_path.iterdir()):
        if folder.name.isascii() and folder.name.isdigit() and (folder / "saved_model.pb").is_file():
            found.setdefault(int(folder.name), folder)
    return dict(sorted(found.items()))


def version_folders(base_path: Path) -> list[int]:
    """The versions under `base_path` (see version_paths), in order."""
    return list(version_paths(base_path))


def version_path(base_path: Path, version: int) -> Path:
    """The folder of `version` under `base_path`: its own name when zero-padded, else `<version>`."""
    return version_paths(base_path).get(version, Path(base_path) / str(version))


def default_config(model_name: str, base_path: Path) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name = model_name
    entry.base_path = str(base_path)
    entry.model_platform = "tensorflow"
    entry.model_version_policy.latest.num_versions = 2
    return config


def read(path: Path) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(Path(path).read_text(), config)
    except text_format.ParseError as error:
        # TF Serving's own words, so that one search finds both servers' refusal
        raise ValueError(f"Error parsing text-format tensorflow.serving.ModelServerConfig: {path}: {error}") from error
    return config


def write(path: Path, config: model_server_config_pb2.ModelServerConfig) -> None:
    """Write to a temporary file beside `path`, then rename: a poller never reads half a file."""
    atomic_write_text(path, text_format.MessageToString(config))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[Path]:
    """The exclusive lock every writer of models.config takes (the Pusher, the canary analysis,
    people, a gRPC reload)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path


def replace(path: Path, config: model_server_config_pb2.ModelServerConfig) -> None:
    """A whole new config (TF Serving's HandleReloadConfigRequest), under the writers' lock: a
    reload never interleaves with the Pusher's or the canary analysis's read-modify-write."""
    with _locked(path) as path:
        write(path, config)


def ensure(path: Path, model_name: str, base_path: Path) -> None:
    """Create the config for one model if the file does not exist yet."""
    if not Path(path).exists():
        write(path, default_config(model_name, base_path))


def policies(config: model_server_config_pb2.ModelServerConfig) -> dict[str, ModelPolicy]:
    out = {}
    for entry in config.model_config_list.config:
        version_policy = entry.model_version_policy
        kind = version_policy.WhichOneof("policy_choice") or "latest"
        out[entry.name] = ModelPolicy(
            name=entry.name,
            base_path=Path(entry.base_path),
            policy=kind,
            latest=version_policy.latest.num_versions or 1,
            specific=tuple(version_policy.specific.versions),
            labels=dict(entry.version_labels),
        )
    return out


def _entry(config: model_server_config_pb2.ModelServerConfig, model_name: str):
    for entry in config.model_config_list.config:
        if entry.name == model_name:
            return entry
    raise KeyError(f"model {model_name!r} is not in the model config")


def _pin_labelled_versions(entry, keep: tuple[int, ...] = ()) -> None:
    versions = sorted(set(entry.version_labels.values()) | set(keep))
    if not versions:
        entry.model_version_policy.latest.num_versions = 1
        return
    entry.model_version_policy.specific.ClearField("versions")
    entry.model_version_policy.specific.versions.extend(versions)


@contextlib.contextmanager
def _changing(path: Path, model_name: str, keep: tuple[int, ...] = ()) -> Iterator:
    """Read-modify-write of one model's entry under an exclusive lock (the Pusher, the canary
    analysis and people may all move labels), written atomically. `keep`: versions to load besides
    the labelled ones."""
    with _locked(path) as path:
        config = read(path)
        entry = _entry(config, model_name)
        yield entry
        _pin_labelled_versions(entry, keep)
        write(path, config)


def _check_canary(entry, model_name: str, expected: int | None) -> int:
    if CANARY not in entry.version_labels:
        raise LookupError(f"model {model_name!r} has no {CANARY!r} label")
    if expected is not None and entry.version_labels[CANARY] != expected:
        raise LookupError(f"the canary is now version {entry.version_labels[CANARY]}, not {expected}: nothing changed")
    return entry.version_labels[CANARY]


def set_label(path: Path, model_name: str, label: str, version: int) -> None:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", label):
        raise ValueError(f"label {label!r}: use letters, digits, '-' and '_'")
    with _changing(path, model_name) as entry:
        entry.version_labels[label] = int(version)


def drop_label(path: Path, model_name: str, label: str) -> None:
    with _changing(path, model_name) as entry:
        if label in entry.version_labels:
            del entry.version_labels[label]


def drop_label_and_load(path: Path, model_name: str, label: str, version: int) -> None:
    """Drop `label` and load `version`: the first half of moving a label to a version TF Serving has
    not loaded yet (it refuses to move a label to an unavailable version, but accepts a new label)."""
    with _changing(path, model_name, keep=(int(version),)) as entry:
        if label in entry.version_labels:
            del entry.version_labels[label]


def promote(path: Path, model_name: str, expected_canary: int | None = None) -> int:
    """Move `stable` to the canary's version and drop `canary`, in one write. Returns that version.
    With `expected_canary`, refuse (LookupError) if the canary changed meanwhile."""
    with _changing(path, model_name) as entry:
        version = _check_canary(entry, model_name, expected_canary)
        entry.version_labels[STABLE] = version
        del entry.version_labels[CANARY]
    return version


def rollback(path: Path, model_name: str, expected_canary: int | None = None) -> int | None:
    """Drop `canary`; `stable` keeps serving. Returns the dropped version (None if there was none)."""
    with _changing(path, model_name) as entry:
        if CANARY not in entry.version_labels:
            return None
        version = _check_canary(entry, model_name, expected_canary)
        del entry.version_labels[CANARY]
    return version
