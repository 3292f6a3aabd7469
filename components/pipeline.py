"""The TFX pipeline: one factory that only wires components (after TFX's penguin example).

ExampleGen (newest span) -> StatisticsGen -> ImportSchemaGen (curated schema) -> ExampleValidator
(stops on anomalies) -> [all spans] -> Transform -> Trainer -> Evaluator (baseline = latest blessed
model) -> report; A/B gate (candidate vs the stable champion on the same held-out faces);
Trainer -> InfraValidator (loads and warms up the model in a real server); Pusher (atomic, as
canary) when both blessed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.dsl.placeholder import placeholder as ph

from components.ab_gate import ABGate
from components.edge import EdgeExporter
from components.infra_validator import EmbeddedInfraValidator
from components.metadata_connection import connection_config
from components.model_card import ModelCardGen
from components.model_report import ModelReportGen
from components.pusher import AtomicPusher
from components.span_resolver import LatestVersionPerSpanStrategy
from components.strict_example_validator import StrictExampleValidator
from moodloop.core.contracts import (
    CURATED_MANIFEST,
    CURATED_SPAN_PATTERN,
    CURATED_SPAN_PREFIX,
    FEATURE_LABEL,
    FEATURE_SLICES,
    LABELLING_QUEUE,
    NUM_CLASSES,
    OUTPUT_PROBABILITIES,
    SIGNATURE_EXAMPLES,
    SOURCE_LABELLED,
)
from moodloop.core.settings import (
    IN_MEMORY_BEAM_ARGS,
    MULTI_PROCESS_BEAM_ARGS,
    REPO_ROOT,
    GateSettings,
    Settings,
    TrainingSettings,
)

# The module files' functions by their import paths, not the files by their paths: every executor
# and every Beam worker runs where the repository is importable (the pipeline env installs it).
# A module file given by path is loaded under an invented name (user_module_0), which the
# multi-process DirectRunner's workers cannot unpickle; and TFX would build a wheel of it and
# pip-install it before each Transform and Trainer run (seconds each, setuptools on the console).
PREPROCESSING_FN = "components.preprocessing.preprocessing_fn"  # Transform
RUN_FN = "components.trainer.run_fn"  # Trainer
TUNER_FN = "components.trainer.tuner_fn"  # Tuner
SCHEMA_FILE = REPO_ROOT / "data" / "schema" / "schema.pbtxt"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything the pipeline needs, passed in (built from Settings by the runners)."""

    pipeline_name: str
    pipeline_root: str
    metadata_location: str  # ML Metadata: a SQLite file or a database URL (metadata_connection)
    curated_dir: str
    schema_path: str
    preprocessing_fn: str  # Transform's, by import path
    run_fn: str  # the Trainer's
    tuner_fn: str  # the Tuner's
    model_base: str
    beam_pipeline_args: tuple[str, ...]
    training: TrainingSettings  # the Trainer's and the Tuner's settings, a run's conf over them
    gate: GateSettings  # the Evaluator's thresholds and the A/B gate's
    canary_share: float  # the Pusher's first share for a new canary
    serving_config: str = ""  # models.config: the gate's champion is `stable`; the Pusher labels `canary`
    traffic_file: str = ""
    status_dir: str = ""  # where the A/B gate's latest verdict is shown (moodloop/core/status.py)
    serving_status_url: str = ""  # TF Serving REST status of the model (the gateway's), for label moves
    inference_log_url: str = ""  # the kept live faces, which self-training pseudo-labels after a drift
    labelling_dir: str = ""  # the labelling queue and its answers
    model_name: str = "emotion"
    # "embedded": the gateway's embedded backend (local default); "tfserving": TFX's InfraValidator
    # with TF Serving in Docker (needs a Docker engine: docker-compose, CI)
    infra_validator: str = "embedded"
    tfserving_image_tag: str = "2.16.1"

    @classmethod
    def from_settings(cls, settings: Settings, **train_overrides: Any) -> PipelineConfig:
        """The pipeline's configuration from the settings; `train_overrides` (a run's conf: epochs,
        tune, ...) replace the training settings' values."""
        return cls(
            pipeline_name=settings.pipeline_name,
            pipeline_root=str(settings.pipeline_root),
            metadata_location=settings.metadata_location,
            curated_dir=str(settings.curated_dir),
            schema_path=str(SCHEMA_FILE),
            preprocessing_fn=PREPROCESSING_FN,
            run_fn=RUN_FN,
            tuner_fn=TUNER_FN,
            model_base=str(settings.model_base),
            beam_pipeline_args=beam_args_for(settings),
            training=settings.training.with_conf(**train_overrides),
            model_name=settings.model_name,
            infra_validator=settings.infra_validator,
            gate=settings.gate,
            serving_config=str(settings.serving_config),
            traffic_file=str(settings.traffic_file),
            status_dir=str(settings.status_dir),
            canary_share=settings.canary.share,
            serving_status_url=f"{settings.gateway_url}/v1/models/{settings.model_name}",
            inference_log_url=str(settings.inference_log_url),
            labelling_dir=str(settings.labelling_dir),
        )


def trainer_config(config: PipelineConfig) -> dict[str, Any]:
    """The Trainer's and the Tuner's custom_config (JSON in the pipeline's IR): the training settings
    whole, and where the stable champion is (warm start). components/trainer.py reads it back with
    `training_from`, so a new training setting needs no key copied by hand."""
    newest_source = newest_span_source(Path(config.curated_dir))
    return {
        "training": dataclasses.asdict(config.training),
        "champion": {
            "model_base": config.model_base,
            "serving_config": config.serving_config,
            "model_name": config.model_name,
        },
        # where the newest span's faces came from (its manifest's `faces_from`): a span of live faces
        # labelled on the loop's request follows a drift, and the Trainer then trains cold
        "newest_span_source": newest_source,
        # ... and then the kept live faces nobody labelled, which it pseudo-labels (self_training_pool)
        "self_training": self_training_pool(config, newest_source),
        # the inference log, whose newest kept faces anchor a fine-tuning run (components/fine_tune.py)
        "inference_log_url": config.inference_log_url,
    }


def live_faces_since_drift(config: PipelineConfig, newest_source: str | None) -> dict | None:
    """components/live_faces.py's Pool when this run retrains on the labelling queue's answers
    (`newest_source`, the newest span's, is `labelled`): the inference log, when the queue's kept
    faces began, and the labelling folder (whose journal says which faces were answered)."""
    if not (config.labelling_dir and config.inference_log_url) or newest_source != SOURCE_LABELLED:
        return None
    try:
        queue = json.loads((Path(config.labelling_dir) / LABELLING_QUEUE).read_text())
    except (OSError, ValueError):  # no queue: the labelled faces came some other way
        return None
    return {"log_url": config.inference_log_url, "since": queue.get("since"), "labelling_dir": config.labelling_dir}


def self_training_pool(config: PipelineConfig, newest_source: str | None) -> dict | None:
    """The kept live faces since the drift (live_faces_since_drift) when self-training is on."""
    return live_faces_since_drift(config, newest_source) if config.training.self_train else None


def newest_span_source(curated_dir: Path) -> str | None:
    """The newest curated span's `faces_from` (data/ingest.py: synthetic, batch, corrections,
    labelled), or None before the first span (or for a span curated before the field existed)."""
    manifests = span_manifests(curated_dir)
    return json.loads(manifests[-1].read_text()).get("faces_from") if manifests else None


def span_manifests(curated_dir: Path) -> list[Path]:
    """Every curated span's manifest, oldest span first (span folders are numbered with 5 digits)."""
    return sorted(curated_dir.glob(f"{CURATED_SPAN_PREFIX}*/{CURATED_MANIFEST}"))


def curated_faces(curated_dir: Path, span_window: int = 0) -> int:
    """Faces in the spans a run trains on (the newest `span_window`, or all), from their manifests."""
    spans = span_manifests(curated_dir)
    if span_window:
        spans = spans[-span_window:]
    return sum(json.loads(path.read_text())["written"] for path in spans)


# Measured on 2 cores (bench/beam_runners.py, 20k faces): the multi-process DirectRunner took 1.6x
# the in-memory one's time over the Beam components. Each component pays 4-7 s to start its worker
# processes (TensorFlow and TFX imported in each), and the rest took as long as in memory, whose
# TensorFlow ops already use both cores. So it is chosen only where there are more cores to use.
MULTI_PROCESS_MIN_CORES = 4


def beam_args_for(settings: Settings) -> tuple[str, ...]:
    """MOODLOOP_BEAM_ARGS when given; else the DirectRunner in memory, or on every core in worker
    processes once the spans a run reads reach MOODLOOP_BEAM_MULTIPROCESS_FACES on a machine with
    at least MULTI_PROCESS_MIN_CORES cores."""
    if settings.beam_args:
        return settings.beam_args
    faces = curated_faces(settings.curated_dir, settings.training.span_window)
    many_cores = (os.cpu_count() or 1) >= MULTI_PROCESS_MIN_CORES
    return MULTI_PROCESS_BEAM_ARGS if many_cores and faces >= settings.beam_multiprocess_faces else IN_MEMORY_BEAM_ARGS


def infra_validator(config: PipelineConfig, model, examples):
    if config.infra_validator == "embedded":
        # Same node id for both kinds: the Airflow DAG's task list does not depend on the choice.
        return EmbeddedInfraValidator(model=model, examples=examples, model_name=config.model_name).with_id(
            "InfraValidator"
        )
    if config.infra_validator == "tfserving":
        return tfx.components.InfraValidator(
            model=model,
            examples=examples,
            serving_spec=tfx.proto.ServingSpec(
                tensorflow_serving=tfx.proto.TensorFlowServing(tags=[config.tfserving_image_tag]),
                local_docker=tfx.proto.LocalDockerConfig(),
                model_name=config.model_name,
            ),
            request_spec=tfx.proto.RequestSpec(
                tensorflow_serving=tfx.proto.TensorFlowServingRequestSpec(signature_names=[SIGNATURE_EXAMPLES]),
                num_examples=8,
                make_warmup=True,
            ),
        )
    raise ValueError(f"infra validator {config.infra_validator!r}: use 'embedded' or 'tfserving'")


def eval_config(min_accuracy: float, max_accuracy_drop: float) -> tfma.EvalConfig:
    """Accuracy, per-class recall and the confusion matrix, overall, per emotion and per slice
    (moodloop/core/slices.py); thresholds on the overall slice only (an unscoped TFMA threshold would
    apply to every other slice too; the A/B gate guards the slices, paired against the champion)."""
    gate = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_accuracy}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -max_accuracy_drop}
        ),
    )
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name=SIGNATURE_EXAMPLES, label_key=FEATURE_LABEL, prediction_key=OUTPUT_PROBABILITIES
            )
        ],
        # overall, per emotion, and per slice value (the multivalent `slice` feature: one slice per value)
        slicing_specs=[
            tfma.SlicingSpec(),
            tfma.SlicingSpec(feature_keys=[FEATURE_LABEL]),
            tfma.SlicingSpec(feature_keys=[FEATURE_SLICES]),
        ],
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[
                    tfma.MetricConfig(class_name="ExampleCount"),
                    tfma.MetricConfig(
                        class_name="SparseCategoricalAccuracy",
                        per_slice_thresholds=[
                            tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()], threshold=gate)
                        ],
                    ),
                    tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
                ]
            ),
            # Per-class recall of the top-1 prediction (not of a 0.5 probability cut-off), by a
            # class of its own: a `config` string cannot be stored in ML Metadata on PostgreSQL.
            tfma.MetricsSpec(
                metrics=[tfma.MetricConfig(class_name="TopOneRecall", module="components.evaluation_metrics")],
                binarize=tfma.BinarizationOptions(class_ids={"values": list(range(NUM_CLASSES))}),
            ),
        ],
    )


def pusher_config(config: PipelineConfig) -> dict[str, Any]:
    """Where a pushed version is labelled (models.config, traffic.json) and watched being served:
    the Pusher's custom_config, also what `moodloop adopt` labels its push with."""
    return {
        "serving_config": config.serving_config,
        "traffic_file": config.traffic_file,
        "canary_share": config.canary_share,
        "model_name": config.model_name,
        "status_url": config.serving_status_url,
    }


def create_pipeline(config: PipelineConfig) -> tfx.dsl.Pipeline:
    """The training pipeline, wired and nothing else: ImportExampleGen (the newest curated span) ->
    StatisticsGen, the curated schema, StrictExampleValidator -> the span resolver (every span, or
    the newest MOODLOOP_SPAN_WINDOW) -> Transform -> [Tuner] -> Trainer (warm from the champion
    found by champion_resolver) -> Evaluator (TFMA thresholds) and the A/B gate -> InfraValidator
    -> AtomicPusher (canary) -> ModelReportGen. The logic lives in the module files
    (preprocessing.py, trainer.py) and in one module per custom component."""
    example_gen = tfx.components.ImportExampleGen(
        input_base=config.curated_dir,
        input_config=tfx.proto.Input(splits=[tfx.proto.Input.Split(name="faces", pattern=CURATED_SPAN_PATTERN)]),
        output_config=tfx.proto.Output(
            split_config=tfx.proto.SplitConfig(
                splits=[
                    tfx.proto.SplitConfig.Split(name="train", hash_buckets=4),
                    tfx.proto.SplitConfig.Split(name="eval", hash_buckets=1),
                ]
            )
        ),
    )
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.ImportSchemaGen(schema_file=config.schema_path)
    example_validator = StrictExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    # Every span curated so far, newest version of each; only after the new span validated.
    all_spans = tfx.dsl.Resolver(
        strategy_class=LatestVersionPerSpanStrategy,
        config={"num_spans": config.training.span_window},
        examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples, producer_component_id=example_gen.id),
    ).with_id("all_spans_resolver")
    all_spans.add_upstream_node(example_validator)

    transform = tfx.components.Transform(
        examples=all_spans.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=config.preprocessing_fn,
        splits_config=tfx.proto.SplitsConfig(analyze=["train"], transform=["train", "eval"]),
        # StatisticsGen already profiles the raw span; statistics over 2,304 transformed floats
        # per face would cost more than the transform itself.
        disable_statistics=True,
    )
    tuner = (
        tfx.components.Tuner(
            tuner_fn=config.tuner_fn,
            examples=transform.outputs["transformed_examples"],
            transform_graph=transform.outputs["transform_graph"],
            schema=schema_gen.outputs["schema"],
            # Trials are scored on a part of the train split: the eval split stays unseen until the Evaluator.
            train_args=tfx.proto.TrainArgs(splits=["train"]),
            eval_args=tfx.proto.EvalArgs(splits=["train"]),
            custom_config=trainer_config(config),
        )
        if config.training.tune
        else None
    )
    trainer = tfx.components.Trainer(
        run_fn=config.run_fn,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        hyperparameters=tuner.outputs["best_hyperparameters"] if tuner else None,
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config=trainer_config(config),
    )
    # TFMA's baseline: the latest model the A/B gate blessed (the gate itself compares with `stable`).
    champion = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(
            type=tfx.types.standard_artifacts.ModelBlessing, producer_component_id="ABGate", output_key="blessing"
        ),
    ).with_id("champion_resolver")
    evaluator = tfx.components.Evaluator(
        examples=all_spans.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=champion.outputs["model"],
        example_splits=["eval"],
        eval_config=eval_config(config.gate.min_accuracy, config.gate.max_accuracy_drop),
    )
    report = ModelReportGen(evaluation=evaluator.outputs["evaluation"], model_run=trainer.outputs["model_run"])
    gate = ABGate(
        model=trainer.outputs["model"],
        examples=all_spans.outputs["examples"],
        evaluation=evaluator.outputs["evaluation"],
        model_base=config.model_base,
        serving_config=config.serving_config,
        model_name=config.model_name,
        **dataclasses.asdict(config.gate),  # the thresholds, one parameter each (GateSettings' fields)
        status_dir=config.status_dir,
        # after a drift, the feedback-labelled live faces since it judge too (typical current traffic)
        feedback_pool=json.dumps(live_faces_since_drift(config, newest_span_source(Path(config.curated_dir)))),
    ).with_id("ABGate")
    infra = infra_validator(config, trainer.outputs["model"], example_gen.outputs["examples"])
    # No `model` input: the Pusher pushes the InfraValidator's stamped copy, warm-up records included.
    pusher = AtomicPusher(
        model_blessing=gate.outputs["blessing"],
        infra_blessing=infra.outputs["blessing"],
        reference_profile=gate.outputs["reference_profile"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=config.model_base)
        ),
        custom_config=pusher_config(config),
    ).with_id("Pusher")
    edge_exporter = EdgeExporter(
        model=trainer.outputs["model"],
        pushed_model=pusher.outputs["pushed_model"],
        examples=all_spans.outputs["examples"],
    )
    model_card = ModelCardGen(
        model_run=trainer.outputs["model_run"],
        report=report.outputs["report"],
        gate_report=gate.outputs["report"],
        pushed_model=pusher.outputs["pushed_model"],
        edge=edge_exporter.outputs["edge"],
        examples=all_spans.outputs["examples"],
        curated_dir=config.curated_dir,
        # the run this card belongs to, resolved by TFX when the component runs
        pipeline_run_id=ph.execution_invocation().pipeline_run_id,
        pipeline_root=config.pipeline_root,
    )
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=[
            example_gen,
            statistics_gen,
            schema_gen,
            example_validator,
            all_spans,
            transform,
            *([tuner] if tuner else []),
            trainer,
            champion,
            evaluator,
            report,
            gate,
            infra,
            pusher,
            edge_exporter,
            model_card,
        ],
        enable_cache=False,
        metadata_connection_config=connection_config(config.metadata_location),
        beam_pipeline_args=list(config.beam_pipeline_args),
    )
