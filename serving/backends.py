"""The gateway's two model backends, behind one interface.

- `EmbeddedBackend` loads every wanted version under each model's base path (TF Serving's
  models.config, version policy and labels), loads new versions as they appear, warms each one up
  before it takes traffic and batches concurrent requests. It is the local stand-in for TF Serving,
  which cannot run on the machines moodloop is developed on.
- `TFServingBackend` forwards to real TF Serving over gRPC (docker-compose, CI), spread over
  one or more replicas with health checks and a retry on another replica.

Errors are `ServingError`s carrying TF Serving's status code names, so the REST and gRPC surfaces
answer exactly as TF Serving would.
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow.python.util import deprecation

from moodloop.core import models_config
from moodloop.core.files import version_of
from serving.batching import BatcherClosedError, BatchingParameters, DynamicBatcher, QueueFullError, Tensors

log = logging.getLogger("moodloop.serving")

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


def freeze_long_lived_objects() -> None:
    """Take every object alive now (TensorFlow's modules, the loaded graphs: millions) out of the
    garbage collector's full collections, which walk all of them: 150-220 ms stalls every few
    seconds under load were the gateway's whole p99 at half of peak (10 ms after). Called once the
    gateway is up and after each model load or unload; unfreezing first lets a collection free
    what an unloaded version left behind."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ServingError(Exception):
    """A request TF Serving would refuse: `code` is the grpc.StatusCode name (NOT_FOUND, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class VersionState:
    version: int
    state: str  # TF Serving's ModelVersionStatus.State name: LOADING, AVAILABLE, UNLOADING, END
    error: str = ""  # non-empty when the version failed to load or warm up


class Backend(Protocol):
    def predict(
        self, model: str, version: int | None, label: str | None, signature: str, inputs: Tensors, typed: bool = False
    ) -> tuple[int, Tensors]: ...

    def signature_defs(self, model: str, version: int | None, label: str | None) -> tuple[int, dict]: ...

    def status(self, model: str, version: int | None, label: str | None) -> list[VersionState]: ...

    def labels(self, model: str) -> dict[str, int]: ...

    def sync(self) -> None:
        """Load what the model config names now (TF Serving's ReloadConfig / the embedded poll)."""
        ...

    def close(self) -> None: ...


def _numpy_dtype(tensor_info: meta_graph_pb2.TensorInfo) -> np.dtype:
    if tensor_info.dtype == tf.string.as_datatype_enum:
        return np.dtype(object)
    return np.dtype(tf.as_dtype(tensor_info.dtype).as_numpy_dtype)


def check_inputs(
    signature_name: str, signature: meta_graph_pb2.SignatureDef, inputs: Tensors, typed: bool = False
) -> Tensors:
    """Validate names and dtypes against the signature, as TF Serving does, and cast to its dtypes.
    Shapes are left to the model, as TF Serving leaves them to its session: a signature declaring
    [-1, 1] that computes elementwise answers a [3] or a scalar input, and one that cannot says so.
    `typed` inputs came with a dtype of their own (gRPC's TensorProto): TF Serving feeds them to the
    session as sent, which refuses any dtype but the signature's, so they are never cast; REST's
    JSON numbers have none and are read as the signature's dtype."""
    expected = set(signature.inputs)
    if set(inputs) != expected:
        unknown, missing = sorted(set(inputs) - expected), sorted(expected - set(inputs))
        detail = f"input tensor alias not found in signature: {', '.join(unknown)}" if unknown else ""
        detail = detail or f"missing input tensor(s): {', '.join(missing)}"
        raise ServingError(
            "INVALID_ARGUMENT", f"{detail}. Inputs expected to be in the set {{{','.join(sorted(expected))}}}."
        )
    out = {}
    for position, (name, value) in enumerate(sorted(inputs.items())):
        dtype = _numpy_dtype(signature.inputs[name])
        sent = np.asarray(value).dtype
        if typed and sent != dtype and not (dtype.kind == "O" and sent.kind in "OSU"):
            # DirectSession's message for a feed of another dtype (FunctionCallFrame::SetArgs)
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Expects arg[{position}] to be {_tf_type_name(dtype)} but {_tf_type_name(sent)} is provided",
            )
        try:
            array = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError, OverflowError):
            got = np.asarray(value).dtype
            kind = "string" if got.kind in "OSU" else got.name
            raise ServingError(
                "INVALID_ARGUMENT", f"input '{name}': {kind} values are not of expected type: {_tf_type_name(dtype)}"
            ) from None
        out[name] = array
    return out


def _tf_type_name(dtype: np.dtype) -> str:
    """TF's name of a numpy dtype (float, double, int64, string), as TF Serving's messages say it."""
    if dtype.kind in "OSU":
        return "string"
    names = {"float32": "float", "float64": "double", "float16": "half"}
    return names.get(tf.as_dtype(dtype).name, tf.as_dtype(dtype).name)


# ---------------------------------------------------------------- embedded backend


class _Servable:
    """One loaded version, as TF Serving's C++ loader holds it: the SavedModel's graph in a session
    of its own (TF1 and TF2 SavedModels alike), each signature run by feeding and fetching its
    tensors by name. Unlike `tf.saved_model.load`, this serves TF1 models whose signatures declare
    shapes their graph does not have (TF Serving's `saved_model_half_plus_three`) and leaves input
    shapes to the graph, as TF Serving does."""

    def __init__(self, model: str, version: int, path: Path) -> None:
        self.model, self.version, self.path = model, version, path
        self.batchers: dict[str, DynamicBatcher] = {}
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        # deprecation.silence: the loader's "use tf.saved_model.load instead" is noise here (see above).
        with self._graph.as_default(), deprecation.silence():
            meta_graph = tf.compat.v1.saved_model.loader.load(self._session, ["serve"], str(path))
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = dict(meta_graph.signature_def)
        self._callables: dict[tuple[str, tuple[str, ...]], Callable] = {}
        self._callables_lock = threading.Lock()

    def _callable(self, signature: str, inputs: tuple[str, ...]) -> Callable:
        key = (signature, inputs)
        with self._callables_lock:
            if key not in self._callables:
                definition = self.signature_defs[signature]
                options = config_pb2.CallableOptions()
                options.feed.extend(definition.inputs[name].name for name in inputs)
                options.fetch.extend(definition.outputs[name].name for name in definition.outputs)
                # The session's callable, not Session.run: run() refuses a feed whose shape differs
                # from the placeholder's, where TF Serving's C++ session leaves it to the kernels.
                self._callables[key] = self._session._make_callable_from_options(options)
            return self._callables[key]

    def run(self, signature: str, inputs: Tensors) -> Tensors:
        names = tuple(sorted(inputs))
        values = self._callable(signature, names)(*(inputs[name] for name in names))
        return dict(zip(self.signature_defs[signature].outputs, values, strict=True))

    def close(self) -> None:
        """Stop taking requests, finish the queued ones, then free the session. A model call still
        running after a minute keeps its session (freed when the last reference goes)."""
        for batcher in self.batchers.values():
            batcher.close()
        if all(batcher.close(wait_seconds=60) for batcher in self.batchers.values()):
            self._session.close()
        else:
            log.warning("model %s version %d: calls still running at unload; its session is left to the collector",
                        self.model, self.version)  # fmt: skip


@dataclass
class _ModelState:
    policy: models_config.ModelPolicy
    servables: dict[int, _Servable] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)


class EmbeddedBackend:
    """TF Serving's model manager, in-process: config polling, version policy, labels, warm-up, batching."""

    def __init__(
        self,
        config_path: Path,
        batching: BatchingParameters,
        poll_seconds: float = 2.0,
        on_batch: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        self.batching = batching
        self.poll_seconds = poll_seconds
        self._on_batch = on_batch or (lambda model, version, rows: None)
        self._models: dict[str, _ModelState] = {}
        self._states: dict[str, dict[int, VersionState]] = {}
        self._failed: dict[tuple[str, int], float] = {}  # (model, version) -> mtime that failed
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.config_error = ""

    # lifecycle
    def start(self) -> EmbeddedBackend:
        """Load what the config asks for. A config that does not parse stops the start, as it
        stops TF Serving (later, while serving, an unreadable config keeps the current one)."""
        self.sync()
        if self.config_error:
            raise ValueError(self.config_error)
        self._poller = threading.Thread(target=self._poll, name="model-poller", daemon=True)
        self._poller.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._poller:
            self._poller.join(timeout=10)
        with self._lock:
            models, self._models = self._models, {}
        for state in models.values():  # outside the lock: closing waits for the calls in flight
            for servable in state.servables.values():
                servable.close()

    def _poll(self) -> None:
        if self.poll_seconds <= 0:  # TF Serving's --model_config_file_poll_wait_seconds=0: read once
            return
        while not self._stop.wait(self.poll_seconds):
            try:
                self.sync()
            except Exception:
                log.exception("model poll failed")

    def sync(self) -> None:
        """Re-read models.config, scan each base path, load/unload versions, then move labels."""
        with self._sync_lock:
            try:
                policies = models_config.policies(models_config.read(self.config_path))
                self.config_error = ""
            except (OSError, ValueError) as error:
                self.config_error = str(error)
                log.error("model config unreadable, keeping the current one: %s", error)
                return
            changed = False
            for policy in policies.values():
                changed |= self._sync_model(policy)
            with self._lock:
                removed = {name: self._models.pop(name) for name in set(self._models) - set(policies)}
            for name, state in removed.items():  # left the config: unloaded, reported END as TF Serving does
                for servable in state.servables.values():
                    servable.close()
                    self._states[name][servable.version] = VersionState(servable.version, "END")
                    log.info("model %s version %d unloaded: the model left the config", name, servable.version)
                changed = True
        if changed:  # here, where nothing refers to an unloaded version any more
            freeze_long_lived_objects()

    def _sync_model(self, policy: models_config.ModelPolicy) -> bool:
        """-> whether a version was loaded or unloaded."""
        current = self._models.get(policy.name)
        loaded = dict(current.servables) if current else {}
        on_disk = models_config.version_paths(policy.base_path)
        wanted = set(policy.wanted(list(on_disk)))
        with self._lock:
            states = self._states.setdefault(policy.name, {})
        for version in sorted(wanted - set(loaded)):
            path = on_disk[version]
            try:
                mtime = (path / "saved_model.pb").stat().st_mtime
            except OSError:  # removed since the scan: the next poll will not see it
                continue
            if self._failed.get((policy.name, version)) == mtime:
                continue  # failed before and unchanged since: do not retry in a loop
            states[version] = VersionState(version, "LOADING")
            try:
                loaded[version] = self._load(policy.name, version, path)
                states[version] = VersionState(version, "AVAILABLE")
                log.info("model %s version %d loaded and warmed up: AVAILABLE", policy.name, version)
            except Exception as error:  # noqa: BLE001 - a bad version must not stop the others
                self._failed[(policy.name, version)] = mtime
                states[version] = VersionState(version, "END", f"{type(error).__name__}: {error}")
                log.error("model %s version %d failed to load: %s", policy.name, version, error)
        labels = {}
        for label, version in policy.labels.items():
            if version in loaded and version in wanted:
                labels[label] = version
            else:
                log.error("label %r -> version %d: that version is not available; label not applied", label, version)
                if current and label in current.labels and current.labels[label] in loaded:
                    labels[label] = current.labels[label]  # keep serving where it pointed
        keep = wanted | set(labels.values())
        removed = [loaded.pop(v) for v in sorted(set(loaded) - keep)]
        with self._lock:
            self._models[policy.name] = _ModelState(policy, loaded, labels)
        for servable in removed:  # after the swap: requests already holding it finish first
            servable.close()
            states[servable.version] = VersionState(servable.version, "END")
            log.info("model %s version %d unloaded", policy.name, servable.version)
        return bool(removed) or set(loaded) != set(current.servables if current else ())

    def _load(self, model: str, version: int, path: Path) -> _Servable:
        servable = _Servable(model, version, path)
        try:
            self._warm_up(servable)
        except Exception:
            servable.close()
            raise
        for signature, definition in servable.signature_defs.items():
            if signature.startswith("__"):
                continue
            servable.batchers[signature] = DynamicBatcher(
                lambda inputs, s=signature: servable.run(s, inputs),
                self.batching,
                on_batch=lambda rows: self._on_batch(model, version, rows),
                name=f"{model}-v{version}-{signature}",
                merge=_has_batch_dimension(definition),
            )
        return servable

    def _warm_up(self, servable: _Servable) -> None:
        """Replay assets.extra/tf_serving_warmup_requests if the model has them (TF Serving's
        behaviour); otherwise call every signature whose inputs are all numeric with zeros."""
        records = servable.path / WARMUP_FILE
        if records.exists():
            from tensorflow_serving.apis import prediction_log_pb2

            for raw in tf.data.TFRecordDataset(str(records)).as_numpy_iterator():
                entry = prediction_log_pb2.PredictionLog.FromString(raw)
                request = entry.predict_log.request
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                servable.run(request.model_spec.signature_name or "serving_default", inputs)
            return
        for name, signature in servable.signature_defs.items():
            if name.startswith("__") or any(i.dtype == tf.string.as_datatype_enum for i in signature.inputs.values()):
                continue
            inputs = {}
            for input_name, info in signature.inputs.items():
                shape = [1 if d.size < 0 else d.size for d in info.tensor_shape.dim]
                inputs[input_name] = np.zeros(shape, dtype=_numpy_dtype(info))
            try:
                servable.run(name, inputs)
            except tf.errors.OpError as error:
                # Zeros are this gateway's guess, not the model's contract (TF Serving warms up only
                # from recorded requests): a signature that refuses them still serves real ones
                # (TF Serving's half_plus_three declares a float input its graph reads as a string).
                log.info("model %s version %d: signature %s not warmed up with zeros: %s",
                         servable.model, servable.version, name, error.message.splitlines()[0])  # fmt: skip

    # requests
    def _resolve(self, model: str, version: int | None, label: str | None) -> _Servable:
        if not model:
            raise ServingError("INVALID_ARGUMENT", "ModelSpec has no name specified.")
        with self._lock:
            state = self._models.get(model)
        if state is None or not state.servables:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({model})")
        if label is not None:
            if label not in state.labels:
                raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
            version = state.labels[label]
        if version is None:
            return state.servables[max(state.servables)]
        if version not in state.servables:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({model}, {version})")
        return state.servables[version]

    def predict(
        self, model: str, version: int | None, label: str | None, signature: str, inputs: Tensors, typed: bool = False
    ) -> tuple[int, Tensors]:
        signature = signature or "serving_default"
        for attempt in range(2):
            servable = self._resolve(model, version, label)
            if signature not in servable.batchers:
                raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{signature}" not found.')
            checked = check_inputs(signature, servable.signature_defs[signature], inputs, typed)
            try:
                return servable.version, servable.batchers[signature].submit(checked)
            except BatcherClosedError:
                if attempt:  # unloaded twice in a row: the version is gone
                    gone = f"model {model} version {servable.version} was unloaded"
                    raise ServingError("UNAVAILABLE", gone) from None
                # else a label moved or the version was unloaded between resolve and submit: resolve again
            except QueueFullError as error:
                raise ServingError("RESOURCE_EXHAUSTED", str(error)) from None
            except TimeoutError:
                raise ServingError("DEADLINE_EXCEEDED", "the model did not answer in time") from None
            except tf.errors.OpError as error:
                raise ServingError(_op_error_code(error), error.message) from None
        raise AssertionError("unreachable: the loop returns or raises")

    def signature_defs(self, model: str, version: int | None, label: str | None) -> tuple[int, dict]:
        servable = self._resolve(model, version, label)
        return servable.version, servable.signature_defs

    def status(self, model: str, version: int | None, label: str | None) -> list[VersionState]:
        """TF Serving's GetModelStatus: every version this server has seen of the model (loading,
        available, or ended: unloaded or failed with its error), or the one asked for."""
        if not model:
            raise ServingError("INVALID_ARGUMENT", "ModelSpec has no name specified.")
        with self._lock:
            states = dict(self._states.get(model) or {})
            labels = dict(self._models[model].labels) if model in self._models else {}
        if label is not None:
            if label not in labels:
                raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
            version = labels[label]
        if version is not None:
            if version not in states:
                raise ServingError("NOT_FOUND", f"Could not find version {version} of model {model}")
            return [states[version]]
        if not states:
            raise ServingError("NOT_FOUND", f"Could not find any versions of model {model}")
        return [states[v] for v in sorted(states, reverse=True)]

    def labels(self, model: str) -> dict[str, int]:
        with self._lock:
            state = self._models.get(model)
            return dict(state.labels) if state else {}

    def wait_for_version(self, model: str, version: int, timeout: float = 60.0) -> None:
        """Block until `version` of `model` is AVAILABLE (tests, the local stack)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                state = self._models.get(model)
                if state and version in state.servables:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"model {model} version {version} not available after {timeout:.0f} s")


def _has_batch_dimension(signature: meta_graph_pb2.SignatureDef) -> bool:
    """Whether calls of this signature can be merged: every input and output declares a first
    dimension of any size (the batch). Other signatures run call by call."""
    tensors = [*signature.inputs.values(), *signature.outputs.values()]
    return bool(tensors) and all(
        not t.tensor_shape.unknown_rank and t.tensor_shape.dim and t.tensor_shape.dim[0].size == -1 for t in tensors
    )


def _op_error_code(error: tf.errors.OpError) -> str:
    # TF's error codes are the same numbers as gRPC's status codes.
    import grpc

    for code in grpc.StatusCode:
        if code.value[0] == error.error_code:
            return code.name
    return "INTERNAL"


# ---------------------------------------------------------------- TF Serving backend


def _version_states(response) -> list[VersionState]:
    """TF Serving's GetModelStatusResponse as VersionStates."""
    from tensorflow_serving.apis import get_model_status_pb2

    names = get_model_status_pb2.ModelVersionStatus.State.Name
    return [VersionState(s.version, names(s.state), s.status.error_message) for s in response.model_version_status]


@dataclass
class _Replica:
    """One TF Serving server: its channel, stubs and what the health checks last saw."""

    target: str
    channel: object
    predict: object  # PredictionServiceStub
    models: object  # ModelServiceStub
    healthy: bool = True  # optimistic until a health check says otherwise
    reason: str = ""  # why it is out of rotation
    calls: int = 0  # RPCs answered (any status but UNAVAILABLE), for status pages and tests


class TFServingBackend:
    """Forward to one or more real TF Serving replicas over gRPC (PredictionService, ModelService).

    Several targets (compose runs two servers on one shared model base path) are spread round-robin;
    a background check asks each for its model status every `health_seconds` and takes a replica
    that does not answer, or serves no version, out of rotation until it does again. A call that
    fails UNAVAILABLE (refused, reset, server gone) is retried on the next replica, which is safe
    because every RPC sent here is idempotent (predict, metadata, status, reload of the same config).
    Everything a load balancer would need beyond that is left to the platform (no home-made proxy)."""

    def __init__(
        self,
        targets: str | list[str],
        config_path: Path,
        timeout: float = 10.0,
        health_seconds: float = 1.0,
        admin_token: str = "",
    ) -> None:
        import grpc

        self._grpc = grpc
        self.config_path = Path(config_path)
        # Sent with config reloads: TF Serving ignores it; a moodloop gateway standing in for it
        # (a replica) requires it (serving/grpc_api.py).
        self._reload_metadata = (("authorization", f"Bearer {admin_token}"),) if admin_token else ()
        self._timeout = timeout
        self._health_seconds = health_seconds
        names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
        if not names or not all(names):
            raise ValueError(f"TF Serving targets {targets!r}: give host:port[,host:port...]")
        self.replicas = [self._connect(target) for target in names]
        self._next = itertools.count()
        self._stop = threading.Event()
        self._checker: threading.Thread | None = None
        # GetModelMetadata per request would double the RPCs: signature defs are cached briefly
        # (a new version or label move shows within SIGNATURE_TTL seconds); labels are re-read when
        # the config file changes (files.version_of).
        self._signature_cache: dict[tuple, tuple[float, int, dict]] = {}
        self._labels_cache: tuple[tuple[int, int, int] | None, dict] = (None, {})
        self._available_cache: dict[str, tuple[float, set[int]]] = {}

    def _connect(self, target: str) -> _Replica:
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        channel = self._grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
                # a restarted replica is found again within a second, not after gRPC's 20 s backoff
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        return _Replica(
            target,
            channel,
            prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel),
        )

    def start(self) -> TFServingBackend:
        if len(self.replicas) > 1:
            self._checker = threading.Thread(target=self._check_loop, name="tfserving-health", daemon=True)
            self._checker.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._checker:
            self._checker.join(5)
        for replica in self.replicas:
            replica.channel.close()

    # ------------------------------------------------------------ replicas

    def _check_loop(self) -> None:
        while not self._stop.wait(self._health_seconds):
            self.check_replicas()

    def check_replicas(self) -> None:
        """Ask every replica for the status of each configured model: healthy when it answers and
        serves at least one version of each."""
        try:
            models = list(models_config.policies(models_config.read(self.config_path)))
        except (OSError, ValueError):
            models = []
        for replica in self.replicas:
            reason = ""
            for model in models:
                try:
                    states = self._status_of(replica, model)
                except self._grpc.RpcError as error:
                    reason = f"{error.code().name}: {error.details() or ''}".strip()
                    break
                if not any(s.state == "AVAILABLE" for s in states):
                    reason = f"no version of {model} is AVAILABLE"
                    break
            self._mark(replica, healthy=not reason, reason=reason)

    def _mark(self, replica: _Replica, healthy: bool, reason: str = "") -> None:
        if healthy != replica.healthy:
            if healthy:
                log.info("TF Serving replica %s is back in rotation", replica.target)
            else:
                log.warning("TF Serving replica %s out of rotation: %s", replica.target, reason)
        replica.healthy, replica.reason = healthy, reason

    def _order(self) -> list[_Replica]:
        """Replicas to try for one call: the healthy ones round-robin, then the others (a check may
        be stale, and trying a doubtful replica beats failing the request)."""
        start = next(self._next) % len(self.replicas)
        rotated = self.replicas[start:] + self.replicas[:start]
        return [r for r in rotated if r.healthy] + [r for r in rotated if not r.healthy]

    def _call(self, service: str, method: str, request):
        """`service` is "predict" (PredictionService) or "models" (ModelService)."""
        failures = []
        for replica in self._order():
            try:
                response = getattr(getattr(replica, service), method)(request, timeout=self._timeout)
            except self._grpc.RpcError as error:
                if error.code() != self._grpc.StatusCode.UNAVAILABLE:
                    replica.calls += 1
                    raise ServingError(error.code().name, error.details() or "") from None
                # Gone, or only busy (TF Serving's full batching queue answers UNAVAILABLE too):
                # the next replica is tried, and the health check alone decides the rotation, so
                # a busy replica is not taken out and traffic does not pile onto the other.
                failures.append(f"{replica.target}: {error.details() or 'unavailable'}")
                continue
            replica.calls += 1
            return response
        raise ServingError("UNAVAILABLE", "no TF Serving replica answered (" + "; ".join(failures) + ")")

    def replica_states(self) -> list[dict]:
        return [{"target": r.target, "healthy": r.healthy, "reason": r.reason, "calls": r.calls} for r in self.replicas]

    # ------------------------------------------------------------ the backend interface

    def _spec(self, spec, model: str, version: int | None, label: str | None, signature: str = "") -> None:
        spec.name = model
        if version is not None:
            spec.version.value = version
        if label is not None:
            spec.version_label = label
        if signature:
            spec.signature_name = signature

    def predict(
        self, model: str, version: int | None, label: str | None, signature: str, inputs: Tensors, typed: bool = False
    ) -> tuple[int, Tensors]:
        from tensorflow_serving.apis import predict_pb2

        _, signature_defs = self.signature_defs(model, version, label)
        if signature and signature not in signature_defs:
            raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{signature}" not found.')
        checked = check_inputs(signature, signature_defs[signature or "serving_default"], inputs, typed)
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, model, version, label, signature)
        for name, value in checked.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = self._call("predict", "Predict", request)
        return response.model_spec.version.value, {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    SIGNATURE_TTL = 2.0

    def signature_defs(self, model: str, version: int | None, label: str | None) -> tuple[int, dict]:
        key = (model, version, label)
        cached = self._signature_cache.get(key)
        if cached and time.monotonic() - cached[0] < self.SIGNATURE_TTL:
            return cached[1], cached[2]
        served, defs = self._fetch_signature_defs(model, version, label)
        self._signature_cache[key] = (time.monotonic(), served, defs)
        return served, defs

    def _fetch_signature_defs(self, model: str, version: int | None, label: str | None) -> tuple[int, dict]:
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, model, version, label)
        response = self._call("predict", "GetModelMetadata", request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return response.model_spec.version.value, dict(signature_map.signature_def)

    def status(self, model: str, version: int | None, label: str | None) -> list[VersionState]:
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, model, version, label)
        return _version_states(self._call("models", "GetModelStatus", request))

    def _status_of(self, replica: _Replica, model: str) -> list[VersionState]:
        """Every version of `model` on one replica (the health check; a short deadline)."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        return _version_states(replica.models.GetModelStatus(request, timeout=min(self._timeout, 2.0)))

    def sync(self) -> None:
        """Push models.config to TF Serving now (ModelService.HandleReloadConfigRequest) instead of
        waiting for its next poll: a promote or rollback takes effect when this returns."""
        from tensorflow_serving.apis import model_management_pb2

        request = model_management_pb2.ReloadConfigRequest(config=models_config.read(self.config_path))
        reached, down, refused = [], [], []
        for replica in self.replicas:  # every replica, not one: each holds its own config
            try:
                response = replica.models.HandleReloadConfigRequest(
                    request, timeout=self._timeout, metadata=self._reload_metadata
                )
            except self._grpc.RpcError as error:
                # A replica that is down re-reads the same models.config from the shared volume
                # when it starts (--model_config_file), so it misses nothing.
                target = down if error.code() == self._grpc.StatusCode.UNAVAILABLE else refused
                target.append(f"{replica.target}: {error.code().name} {error.details() or ''}".strip())
                continue
            if response.status.error_code != 0:
                refused.append(f"{replica.target} refused the config: {response.status.error_message}")
                continue
            reached.append(replica.target)
        # Tried on every replica before judging: one that refuses does not keep the others behind.
        if refused:
            took = f"; took it: {', '.join(reached)}" if reached else ""
            raise ServingError("FAILED_PRECONDITION", "TF Serving: " + "; ".join(refused) + took)
        if not reached:
            raise ServingError("UNAVAILABLE", "no TF Serving replica took the new config: " + "; ".join(down))

    def labels(self, model: str) -> dict[str, int]:
        try:
            version = version_of(self.config_path)
            if version != self._labels_cache[0]:
                policies = models_config.policies(models_config.read(self.config_path))
                self._labels_cache = (version, {name: dict(p.labels) for name, p in policies.items()})
        except (OSError, ValueError):
            return {}
        # Only labels TF Serving can already serve: right after a push it has not re-read the
        # config or loaded the version yet, and a request routed there would fail.
        available = self._available(model)
        return {label: v for label, v in self._labels_cache[1].get(model, {}).items() if v in available}

    def _available(self, model: str) -> set[int]:
        cached = self._available_cache.get(model)
        if cached and time.monotonic() - cached[0] < self.SIGNATURE_TTL:
            return cached[1]
        # On every replica in rotation: a request routed by label may land on any of them.
        in_rotation = [r for r in self.replicas if r.healthy] or self.replicas
        versions: set[int] | None = None
        for replica in in_rotation:
            try:
                states = self._status_of(replica, model)
            except self._grpc.RpcError:
                continue
            here = {s.version for s in states if s.state == "AVAILABLE"}
            versions = here if versions is None else versions & here
        versions = versions or set()
        self._available_cache[model] = (time.monotonic(), versions)
        return versions
