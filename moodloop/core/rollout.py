"""The rollout contract: which version is `stable`, which is the `canary`, and the canary's share
of the traffic. The Pusher labels a new version, the canary analysis ramps, promotes or rolls
back, the gateway routes by it and people move it with the CLI: all of them through `Rollout`.

Labels live in TF Serving's `models.config` (models_config.py; TF Serving and the embedded backend
both re-read it). TF Serving has labels but no split, so the gateway adds it: a request that
names no version or label goes to `canary` for a share of clients, else to `stable`. The choice
hashes the client id, so a client always lands on the same side, and raising the share
(10 % -> 50 % -> 100 %) only moves clients from stable to canary, never back. The share lives in
a small JSON file beside models.config (`traffic.json`) so the canary analysis can ramp it while
the gateway runs.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moodloop.core import alerts, models_config
from moodloop.core.files import atomic_write_text, version_of
from moodloop.core.models_config import CANARY, STABLE

__all__ = ["CANARY", "STABLE", "Rollout", "TrafficFile", "champion_version", "choose_label", "client_bucket"]


def client_bucket(client_id: str) -> float:
    """A stable number in [0, 1) for a client id."""
    digest = hashlib.sha256(client_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_label(client_id: str | None, labels: dict[str, int], canary_share: float) -> str | None:
    """stable / canary for a request that pinned nothing; None = the newest version (no labels yet)."""
    if CANARY in labels and canary_share > 0 and client_bucket(client_id or uuid.uuid4().hex) < canary_share:
        return CANARY
    return STABLE if STABLE in labels else None


def champion_version(model_base: Path | str, labels: dict[str, int]) -> int | None:
    """The version users get when they name none, and the one a candidate must beat: the `stable`
    label's if its folder is on disk, else the newest version on disk, else None (no model yet)."""
    on_disk = models_config.version_folders(Path(model_base))
    if labels.get(STABLE) in on_disk:
        return labels[STABLE]
    return on_disk[-1] if on_disk else None


class TrafficFile:
    """{"canary_share": 0.1}; re-read when it changes, written atomically."""

    RECHECK_SECONDS = 0.5  # another process's change (the canary analysis) is seen within this

    def __init__(self, path: Path, default_share: float) -> None:
        self.path = Path(path)
        self.default_share = default_share
        self._version: tuple[int, int, int] | None = None
        self._share = default_share
        self._checked = float("-inf")

    def share(self) -> float:
        """The current share; the file is looked at (stat) at most every RECHECK_SECONDS: this is
        read on every request. `set` on this object takes effect at once."""
        now = time.monotonic()
        if now - self._checked < self.RECHECK_SECONDS:
            return self._share
        self._checked = now
        try:
            version = version_of(self.path)
        except FileNotFoundError:
            return self.default_share
        if version != self._version:
            try:
                self._share = _valid(json.loads(self.path.read_text())["canary_share"])
                self._version = version
            except (ValueError, KeyError, TypeError, OSError):
                pass  # a broken file keeps the last good share; `set` rewrites it
        return self._share

    def set(self, share: float) -> None:
        atomic_write_text(self.path, json.dumps({"canary_share": _valid(share)}))
        self._share, self._version, self._checked = _valid(share), version_of(self.path), time.monotonic()


def _valid(share: object) -> float:
    value = float(share)  # type: ignore[arg-type]
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"canary share must be between 0 and 1, got {value}")
    return value


@dataclass(frozen=True)
class Rollout:
    """One model's rollout: its labels in `serving_config` and its canary share in `traffic_file`.
    `initial_share` is where every new canary starts, and where the share returns after a
    promotion or a rollback (the next canary starts small again)."""

    serving_config: Path
    model_name: str
    initial_share: float = 0.1
    traffic_file: Path | None = None
    settings: Any = None  # Settings, for the alert a rollback posts (moodloop/core/alerts.py); None: no alert

    @classmethod
    def from_settings(cls, settings) -> Rollout:
        return cls(
            Path(settings.serving_config), settings.model_name, settings.canary.share, settings.traffic_file, settings
        )

    @property
    def traffic(self) -> TrafficFile | None:
        return TrafficFile(self.traffic_file, self.initial_share) if self.traffic_file else None

    def labels(self) -> dict[str, int]:
        """The model's version labels in models.config ({} before the first push writes it)."""
        if not self.serving_config.exists():
            return {}
        policy = models_config.policies(models_config.read(self.serving_config)).get(self.model_name)
        return dict(policy.labels) if policy else {}

    def champion(self, model_base: Path | str) -> int | None:
        """champion_version with this model's labels."""
        return champion_version(model_base, self.labels())

    def share(self) -> float:
        return self.traffic.share() if self.traffic else self.initial_share

    def set_share(self, share: float) -> None:
        if self.traffic:
            self.traffic.set(share)

    def label_new_version(self, version: int, model_base: Path, wait_until_served: Callable[[int], None]) -> str:
        """A pushed version becomes the canary at `initial_share`; `stable` stays where it is. The
        first version of a model becomes `stable` directly. Returns the label given.

        Replacing a canary: TF Serving refuses to move a label to a version it has not loaded, so
        the old label is dropped and the new version loaded first; `wait_until_served(version)`
        returns once it is, then the label moves."""
        models_config.ensure(self.serving_config, self.model_name, Path(model_base))
        labels = self.labels()
        if STABLE not in labels:
            models_config.set_label(self.serving_config, self.model_name, STABLE, version)
            return STABLE
        self.set_share(self.initial_share)  # the share first: a new canary never sees an old ramp's share
        if CANARY in labels:
            models_config.drop_label_and_load(self.serving_config, self.model_name, CANARY, version)
            wait_until_served(version)
        models_config.set_label(self.serving_config, self.model_name, CANARY, version)
        return CANARY

    def promote(self, expected_canary: int | None = None) -> int:
        """`stable` := the canary's version, `canary` dropped, in one write; the share back to its
        start. With `expected_canary`, refuse (LookupError) if the canary changed meanwhile."""
        version = models_config.promote(self.serving_config, self.model_name, expected_canary=expected_canary)
        self.set_share(self.initial_share)
        return version

    def rollback(self, expected_canary: int | None = None, reasons: list[str] | None = None) -> int | None:
        """`canary` dropped, `stable` serves everything; the share back to its start. Returns the
        dropped version (None if there was no canary). A rollback posts an alert with `reasons`."""
        version = models_config.rollback(self.serving_config, self.model_name, expected_canary=expected_canary)
        self.set_share(self.initial_share)
        if version is not None and self.settings is not None:
            stable = self.labels().get(STABLE)  # a rollback leaves stable where it was
            numbers = {"canary dropped": version, "stable": stable, "why": "; ".join(reasons or ["by hand"])}
            alerts.post(self.settings, alerts.ROLLBACK, f"{self.model_name}: canary v{version} rolled back", numbers)
        return version
