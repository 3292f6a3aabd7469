"""AtomicPusher: TFX's Pusher, except that a version appears in the model base path in one rename,
with the A/B gate's reference profile inside it (a declared input), and the pushed version is
labelled through the rollout contract (moodloop/core/rollout.py): `stable` for the first model,
`canary` after that."""

import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.standard_component_specs import PusherSpec
from tfx.utils import io_utils, json_utils

from components.ab_gate import ReferenceProfile, accuracy_estimator_file, reference_profile_file
from moodloop.core.contracts import ACCURACY_ESTIMATOR, REFERENCE_PROFILE
from moodloop.core.files import publish_version
from moodloop.core.rollout import STABLE, Rollout

log = logging.getLogger(__name__)

REFERENCE_PROFILE_KEY = "reference_profile"  # the Pusher's input from the A/B gate's output of that name


class AtomicPusherExecutor(pusher_executor.Executor):
    """Push by copying to a hidden staging folder beside the version, then one rename.

    TF Serving (and the embedded backend) poll the base path for numeric folders; TFX's own
    Pusher copies file by file into the numeric folder, so a poller can see a half-written
    version. A rename within one filesystem is atomic. Other filesystems (gs://, s3://) fall
    back to TFX's behaviour, which at least writes saved_model.pb last.
    """

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        destination = pusher_pb2.PushDestination()
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
        staging = os.path.join(base, f".incoming-{uuid.uuid4().hex[:8]}")
        try:
            shutil.copytree(model_path, staging)
            _add_reference_profile(input_dict, staging)
            version = publish_version(staging, base)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        final = os.path.join(base, str(version))
        log.info(f"pushed model version {version} to {final}")
        label_pushed_version(json.loads(exec_properties.get("custom_config") or "null") or {}, base, version)
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=final, pushed_version=str(version))


def _add_reference_profile(input_dict, model_dir: str) -> None:
    """The A/B gate's reference profile and the accuracy estimator fitted beside it go into the
    version folder (the model contract's REFERENCE_PROFILE, ACCURACY_ESTIMATOR): the drift jobs and
    the canary analysis find the served model's reference and estimator beside it."""
    for profile in input_dict.get(REFERENCE_PROFILE_KEY, []):
        for source, name in (
            (reference_profile_file(profile), REFERENCE_PROFILE),
            (accuracy_estimator_file(profile), ACCURACY_ESTIMATOR),
        ):
            if os.path.exists(source):
                target = os.path.join(model_dir, name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copy(source, target)


class AtomicPusherSpec(PusherSpec):
    """TFX's PusherSpec and one more input: the reference profile the A/B gate made."""

    INPUTS = {**PusherSpec.INPUTS, REFERENCE_PROFILE_KEY: ChannelParameter(type=ReferenceProfile, optional=True)}


class AtomicPusher(base_component.BaseComponent):
    """TFX's Pusher (same parameters, same PushedModel output) with AtomicPusherExecutor and the
    reference profile as a declared input, so the profile travels in ML Metadata's lineage rather
    than as a path in the blessing's properties."""

    SPEC_CLASS = AtomicPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(AtomicPusherExecutor)

    def __init__(
        self,
        model_blessing: types.BaseChannel,
        infra_blessing: types.BaseChannel | None = None,
        reference_profile: types.BaseChannel | None = None,
        push_destination: pusher_pb2.PushDestination | None = None,
        custom_config: dict | None = None,
        model: types.BaseChannel | None = None,
    ) -> None:
        spec = AtomicPusherSpec(
            model=model,
            model_blessing=model_blessing,
            infra_blessing=infra_blessing,
            reference_profile=reference_profile,
            push_destination=push_destination,
            custom_config=json_utils.dumps(custom_config),
            pushed_model=types.Channel(type=standard_artifacts.PushedModel),
        )
        super().__init__(spec=spec)


def label_pushed_version(config: dict, model_base: str, version: int) -> str | None:
    """Push as canary: the new version gets the `canary` label and the configured traffic share;
    `stable` stays where it is. The first model of a model base becomes `stable` directly.
    Returns the label given (None when no models.config is configured)."""
    if not config.get("serving_config"):
        return None

    rollout = Rollout(
        Path(config["serving_config"]),
        config.get("model_name", "emotion"),
        float(config["canary_share"]),
        Path(config["traffic_file"]) if config.get("traffic_file") else None,
    )
    label = rollout.label_new_version(
        version, Path(model_base), lambda v: _wait_until_served(config.get("status_url", ""), v)
    )
    if label == STABLE:
        log.info(f"version {version} is the first model: labelled {STABLE} in {rollout.serving_config}")
    else:
        log.info(
            f"version {version} labelled {label} ({rollout.initial_share:.0%} of traffic); "
            f"{STABLE} stays on version {rollout.labels()[STABLE]} ({rollout.serving_config})"
        )
    return label


def _wait_until_served(status_url: str, version: int, timeout: float = 120.0) -> None:
    """Poll TF Serving's REST status (the gateway's or TF Serving's own) until `version` is AVAILABLE.
    No server answering means nobody serves the old label either: go on at once."""

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
    log.warning(f"warning: version {version} not AVAILABLE after {timeout:.0f} s; labelling it anyway")
