"""The offline A/B gate: candidate and champion predict the same held-out faces, and statistics
decide, not a single threshold.

- McNemar's exact test on the paired per-face correctness: is the candidate better, beyond chance?
- A paired bootstrap confidence interval of the accuracy difference (reported).
- Per-class recall non-regression: disgust is ~1.5 % of FER2013, and a collapse there must not
  hide inside a better overall accuracy. A class blocks when its recall drops by more than the
  allowed drop, its F1 falls too (a recall that a champion bought with its precision, by calling
  too many faces that class, is no loss), and the drop is significant by the exact McNemar test
  within the class (a percentile bootstrap is far too sure on a class of a few faces: it blocked
  2 of 4 faces).
  The bootstrap bound of each class's change is reported.
- A bias audit over slices (moodloop/core/slices.py: image-property buckets, the generator's nuisance
  attributes, a batch's extra columns): per slice the accuracy and recall of both models and the
  largest gap between the slices of an attribute; a slice with at least `min_slice_examples`
  faces blocks like a class (an accuracy drop beyond `max_slice_accuracy_drop`, significant by
  McNemar within the slice). Written as bias_report.json + .png beside the gate report.
- A minimum number of held-out faces, below which the gate refuses to decide (and says so).
- The first model (no champion yet) faces the absolute accuracy floor alone.

The champion is the model the `stable` label serves (models.config, the model contract), or the newest
version under the model base path while there are no labels: the gate compares with what users get.
"""

import dataclasses
import glob
import json
import logging
import os
from pathlib import Path
from typing import List  # noqa: UP035 - TFX's component parser reads typing.List annotations

import numpy as np
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact, artifact_utils, standard_artifacts

from components import accuracy_estimator, live_faces
from components.span_resolver import span_of
from moodloop.core import encoded_images, slices, status
from moodloop.core.contracts import (
    ACCURACY_ESTIMATOR,
    ADOPTED_RECORD,
    EMOTIONS,
    FACE_SIZE,
    FEATURE_IMAGE,
    FEATURE_LABEL,
    FEATURE_SLICES,
    OUTPUT_EMBEDDING,
    OUTPUT_PROBABILITIES,
    REAL_SOURCES,
    REFERENCE_PROFILE,
    SIGNATURE_EXAMPLES,
    SOURCE_ATTRIBUTE,
    SOURCE_FEEDBACK,
    SOURCE_LABELLED,
)
from moodloop.core.image_properties import decode_grey, property_buckets
from moodloop.core.log_records import PREDICTION_SCHEMA, Prediction, prediction_row
from moodloop.core.rollout import Rollout
from moodloop.core.settings import GateSettings

log = logging.getLogger(__name__)

# Resamples of the paired bootstrap: enough for a 95 % interval to two decimals; not a setting
# (no one needs to tune it: MOODLOOP_GATE_BOOTSTRAP was retired).
BOOTSTRAP_RESAMPLES = 1000

GATE_REPORT_JSON = "gate_report.json"
GATE_REPORT_PNG = "gate_report.png"
BIAS_REPORT_JSON = "bias_report.json"
BIAS_REPORT_PNG = "bias_report.png"

# The newest feedback-labelled live faces since a drift the gate judges on (components/live_faces.py):
# McNemar's test gains little past a few thousand faces, and each costs both models a prediction.
MOST_FEEDBACK_FACES = 5000


def mcnemar_exact_p(candidate_only: int, champion_only: int) -> float:
    """One-sided exact McNemar p-value for "the candidate is better": among the faces exactly one
    model gets right, P(the candidate wins at least this many | both equally good)."""
    from scipy.stats import binom

    discordant = candidate_only + champion_only
    if discordant == 0:
        return 1.0
    return float(binom.sf(candidate_only - 1, discordant, 0.5))


def _bootstrap_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `values` over bootstrap resamples (paired: the same faces for both models).

    The values are differences of right/wrong (-1, 0, +1): how often each value is drawn into a
    resample of n faces is multinomial, so drawing those counts is the same bootstrap as drawing
    faces, in time that does not grow with n (1,000 resamples of 1,000 faces: 0.1 ms, not 10 ms)."""
    if len(values) == 0:
        return np.zeros(resamples)
    n = len(values)
    distinct, counts = np.unique(values, return_counts=True)
    # The multinomial counts as a chain of binomials (each value's share of the faces not yet
    # drawn): numpy's vectorised binomial is far quicker than its multinomial with `size`.
    remaining, share_left, total = np.full(resamples, n), 1.0, np.zeros(resamples)
    for value, share in zip(distinct[:-1], counts[:-1] / n, strict=True):
        drawn = rng.binomial(remaining, min(1.0, share / share_left))
        total += drawn * value
        remaining -= drawn
        share_left -= share
    return (total + remaining * distinct[-1]) / n


@dataclasses.dataclass(frozen=True)
class PairedChange:
    """Candidate vs champion on one group of held-out faces (an emotion's, a slice's): the share
    each gets right, the bootstrap upper bound of the change, the exact McNemar p-value that the
    champion is better within the group, and whether that is a regression (a drop beyond
    `max_drop` that is significant)."""

    candidate: float
    champion: float
    change_upper_bound: float
    p_worse: float
    regression: bool

    @classmethod
    def of(
        cls,
        cand_correct: np.ndarray,
        champ_correct: np.ndarray,
        thresholds: GateSettings,
        max_drop: float,
        rng: np.random.Generator,
    ) -> "PairedChange":  # a string: this module has no postponed annotations (TFX parses the component)
        cand, champ = float(cand_correct.mean()), float(champ_correct.mean())
        diff_boot = _bootstrap_means(cand_correct - champ_correct, BOOTSTRAP_RESAMPLES, rng)
        upper = float(np.quantile(diff_boot, 1 - thresholds.alpha))  # one-sided upper bound of the change
        change = cand_correct - champ_correct  # +1: only the candidate right, -1: only the champion
        p_worse = mcnemar_exact_p(int((change < 0).sum()), int((change > 0).sum()))
        return cls(cand, champ, upper, p_worse, (cand - champ) < -max_drop and p_worse < thresholds.alpha)


def _macro_recall(labels: np.ndarray, correct: np.ndarray) -> tuple[float, dict[str, float]]:
    """Mean recall over the emotions present, and each emotion's recall."""
    per_class = {EMOTIONS[k]: float(correct[labels == k].mean()) for k in np.unique(labels)}
    return float(np.mean(list(per_class.values()))), per_class


def audit_slices(
    labels: np.ndarray,
    cand_correct: np.ndarray,
    champ_correct: np.ndarray | None,
    face_slices: list[dict[str, str]],
    thresholds: GateSettings,
    rng: np.random.Generator,
) -> dict:
    """The bias audit (bias_report.json): per slice its `faces`, the candidate's `accuracy`,
    `recall` (mean over emotions) and `class_recall`; whether it is `guarded` (at least
    `min_slice_examples` faces); with a champion, the champion's numbers, the `change`, its
    bootstrap upper bound, McNemar's p that the candidate is worse and `regression`. `gaps`: per
    attribute, the largest accuracy and recall gap between its guarded slices; `largest_gap`:
    the widest of them."""
    report: dict[str, dict] = {}
    for attribute, value in sorted({pair for face in face_slices for pair in face.items()}):
        members = np.array([face.get(attribute) == value for face in face_slices])
        recall, class_recall = _macro_recall(labels[members], cand_correct[members])
        row = {
            "attribute": attribute,
            "value": value,
            "faces": int(members.sum()),
            "accuracy": float(cand_correct[members].mean()),
            "recall": recall,
            "class_recall": class_recall,
            "guarded": bool(members.sum() >= thresholds.min_slice_examples),
        }
        if champ_correct is not None:
            paired = PairedChange.of(
                cand_correct[members], champ_correct[members], thresholds, thresholds.max_slice_accuracy_drop, rng
            )
            row.update(
                champion_accuracy=paired.champion,
                champion_recall=_macro_recall(labels[members], champ_correct[members])[0],
                change=paired.candidate - paired.champion,
                change_upper_bound=paired.change_upper_bound,
                mcnemar_p_worse=paired.p_worse,
                regression=paired.regression and row["guarded"],
            )
        report[slices.name(attribute, value)] = row
    gaps = {}
    for attribute in sorted({row["attribute"] for row in report.values()}):
        guarded = {row["value"]: row for row in report.values() if row["attribute"] == attribute and row["guarded"]}
        if len(guarded) < 2:
            continue
        best = max(guarded, key=lambda v: guarded[v]["accuracy"])
        worst = min(guarded, key=lambda v: guarded[v]["accuracy"])
        recalls = [row["recall"] for row in guarded.values()]
        gaps[attribute] = {
            "accuracy_gap": guarded[best]["accuracy"] - guarded[worst]["accuracy"],
            "best": best,
            "worst": worst,
            "recall_gap": max(recalls) - min(recalls),
        }
    widest = max(gaps, key=lambda a: gaps[a]["accuracy_gap"]) if gaps else None
    return {
        "slices": report,
        "gaps": gaps,
        "largest_gap": {"attribute": widest, **gaps[widest]} if widest else None,
        "min_slice_examples": thresholds.min_slice_examples,
        "max_slice_accuracy_drop": thresholds.max_slice_accuracy_drop,
    }


def _f1(labels: np.ndarray, predicted: np.ndarray, k: int) -> float:
    """Class k's F1 (recall and precision together) over the held-out faces."""
    right = int(((predicted == k) & (labels == k)).sum())
    return 2 * right / max(1, int((predicted == k).sum() + (labels == k).sum()))


def _judged_faces(
    n: int, current: np.ndarray | None, thresholds: GateSettings, face_slices: list[dict[str, str]] | None = None
) -> tuple[np.ndarray, dict]:
    """The mask of the faces the superiority test judges, and what it says about them."""
    every = np.ones(n, dtype=bool)
    if current is None or not current.any():
        return every, {"on": "all", "faces": n, "why": "all held-out faces"}
    current = np.asarray(current, dtype=bool)
    faces = int(current.sum())
    if faces < thresholds.min_current_examples or faces == n:
        why = (
            f"all held-out faces: the current traffic's {faces} are fewer than {thresholds.min_current_examples} "
            "(MOODLOOP_GATE_MIN_CURRENT_EXAMPLES)"
            if faces < thresholds.min_current_examples
            else "all held-out faces (all of them are current traffic)"
        )
        return every, {"on": "all", "faces": n, "why": why}
    # the current faces are the loop's asked-for ones (the newest span's) and feedback-labelled ones
    sources = [face.get(SOURCE_ATTRIBUTE) for face in face_slices] if face_slices else [None] * n
    feedback = sum(source == SOURCE_FEEDBACK for source, now in zip(sources, current, strict=True) if now)
    asked = faces - feedback
    why = (
        f"current traffic: {faces} live faces labelled by people since the drift ({asked} held out of those the "
        f"loop asked about, {feedback} with a feedback label); the other {n - faces} (earlier traffic) are "
        "guarded against a significant drop"
    )
    return current, {"on": "current", "faces": faces, "asked": asked, "feedback": feedback, "why": why}


def decide(
    labels: np.ndarray,
    candidate: np.ndarray,
    champion: np.ndarray | None,
    thresholds: GateSettings,
    face_slices: list[dict[str, str]] | None = None,
    champion_adopted: bool = False,
    current: np.ndarray | None = None,
) -> dict:
    """The verdict and its numbers. `candidate` / `champion` are predicted class ids per face.

    Which faces judge: all held-out faces, unless `current` (a mask: the faces that stand for what
    users send now, see `current_traffic`) holds at least `min_current_examples`. Then the
    superiority test and the per-class guard judge those faces, and the others (earlier traffic) are
    guarded like a slice: an accuracy drop beyond `max_slice_accuracy_drop` that is significant
    blocks. After a drift the held-out faces are mostly yesterday's; judged on all of them, a
    candidate that heals today's traffic with 500 labels was refused (0.863 vs 0.870 on 898 faces,
    90 % of them pre-shift). Which rule applies follows from the spans, never from which test
    passes, so the false-promotion level stays `alpha`.

    The result (report.json's `gate`):
    - `verdict`: BLESSED, REJECTED, or UNDECIDED (fewer held-out faces than `min_examples`);
      `blessed`: the verdict as a boolean; `reasons`: one sentence per rule that refused;
    - `examples` (all held-out faces), `thresholds`, `has_champion`, `all_faces` (both accuracies on
      all of them; the floor applies there);
    - `judged`: `on` ("all" or "current"), `faces`, and `why`; the numbers below are on those faces:
    - `candidate_accuracy`; with a champion: `champion_accuracy`, `accuracy_difference` (candidate - champion) and its
      bootstrap interval `accuracy_difference_ci`, `mcnemar` (faces only the candidate got right,
      only the champion got right, and the one-sided exact p-value that the candidate is better);
    - `per_class`: per emotion, its `faces`, both recalls, their `change`, the bootstrap
      `change_upper_bound`, `mcnemar_p_worse` (exact, within the class) and `regression` (a drop
      beyond `max_class_recall_drop` that is significant: it blocks the candidate);
    - with `face_slices` (each face's slice attributes), `bias`: the audit (audit_slices); a
      guarded slice's regression blocks the candidate (the `source` slices among them: a
      candidate worse on real faces is refused however much better it is on synthetic ones);
    - `real_faces`: held-out faces whose source is real (REAL_SOURCES). Over a `champion_adopted`
      (a team's own model) with none, the candidate is refused unless `allow_synthetic_over_real`;
    - judged on current faces, `earlier`: the guard of the other faces (both accuracies, `faces`,
      `mcnemar_p_worse`, `regression`).
    """
    rng = np.random.default_rng(0)  # the same faces and models, the same verdict
    n = len(labels)
    cand_correct = (candidate == labels).astype(np.float64)
    accuracy = float(cand_correct.mean()) if n else 0.0
    judged, judged_on = _judged_faces(n, current if champion is not None else None, thresholds, face_slices)
    result: dict = {
        "examples": n,
        "judged": judged_on,
        "candidate_accuracy": float(cand_correct[judged].mean()) if judged.any() else 0.0,
        "all_faces": {"candidate_accuracy": accuracy},
        "thresholds": dataclasses.asdict(thresholds),
        "has_champion": champion is not None,
        "champion_adopted": champion_adopted,
        "real_faces": sum(face.get(SOURCE_ATTRIBUTE) in REAL_SOURCES for face in face_slices or []),
        "reasons": [],
    }
    champ_correct = (champion == labels).astype(np.float64) if champion is not None else None
    if face_slices is not None:
        # its own stream: the overall and per-class numbers stay what they were without slices
        result["bias"] = audit_slices(
            labels, cand_correct, champ_correct, face_slices, thresholds, np.random.default_rng(1)
        )
    if n < thresholds.min_examples:
        result.update(
            verdict="UNDECIDED",
            blessed=False,
            reasons=[
                f"only {n} held-out faces; the gate decides from {thresholds.min_examples} (MOODLOOP_GATE_MIN_EXAMPLES)"
            ],
        )
        return result
    reasons = []
    if accuracy < thresholds.min_accuracy:
        reasons.append(f"accuracy {accuracy:.4f} is below the floor {thresholds.min_accuracy:.4f}")
    if champion is None:
        result.update(verdict="BLESSED" if not reasons else "REJECTED", blessed=not reasons, reasons=reasons)
        return result

    assert champ_correct is not None
    result["all_faces"]["champion_accuracy"] = float(champ_correct.mean())
    # from here on the faces judged (all of them, or the current traffic's)
    labels, candidate, champion = labels[judged], candidate[judged], champion[judged]
    cand_judged, champ_judged = cand_correct[judged], champ_correct[judged]
    candidate_only = int(((cand_judged == 1) & (champ_judged == 0)).sum())
    champion_only = int(((cand_judged == 0) & (champ_judged == 1)).sum())
    p_value = mcnemar_exact_p(candidate_only, champion_only)
    diffs = _bootstrap_means(cand_judged - champ_judged, BOOTSTRAP_RESAMPLES, rng)
    low, high = np.quantile(diffs, [thresholds.alpha / 2, 1 - thresholds.alpha / 2])
    result.update(
        champion_accuracy=float(champ_judged.mean()),
        accuracy_difference=float(cand_judged.mean() - champ_judged.mean()),
        accuracy_difference_ci=[float(low), float(high)],
        mcnemar={"candidate_only": candidate_only, "champion_only": champion_only, "p_value": p_value},
    )
    if p_value >= thresholds.alpha:
        on = "" if judged_on["on"] == "all" else f" on the {judged_on['faces']} faces of current traffic"
        reasons.append(
            f"not better than the champion beyond chance{on}: accuracy {result['candidate_accuracy']:.4f} against "
            f"the champion's {result['champion_accuracy']:.4f}, McNemar exact p = {p_value:.3g} "
            f"(needs < {thresholds.alpha})"
        )
    if judged_on["on"] == "current":
        earlier = PairedChange.of(
            cand_correct[~judged], champ_correct[~judged], thresholds, thresholds.max_slice_accuracy_drop, rng
        )
        result["earlier"] = {
            "faces": int((~judged).sum()),
            "candidate_accuracy": earlier.candidate,
            "champion_accuracy": earlier.champion,
            "change_upper_bound": earlier.change_upper_bound,
            "mcnemar_p_worse": earlier.p_worse,
            "regression": earlier.regression,
        }
        if earlier.regression:
            reasons.append(
                f"earlier traffic: accuracy fell from {earlier.champion:.3f} to {earlier.candidate:.3f} on "
                f"{int((~judged).sum())} faces (McNemar exact p = {earlier.p_worse:.3g} that it is worse, needs >= "
                f"{thresholds.alpha}; allowed drop {thresholds.max_slice_accuracy_drop})"
            )

    per_class = {}
    for k, emotion in enumerate(EMOTIONS):
        members = labels == k
        count = int(members.sum())
        if count == 0:
            continue
        paired = PairedChange.of(
            cand_judged[members], champ_judged[members], thresholds, thresholds.max_class_recall_drop, rng
        )
        # A recall drop blocks only when precision did not pay for it (the class's F1 fell too): a
        # champion broken by a shift that calls every flat, dim face "neutral" has an inflated
        # neutral recall, and on a fresh clone's drill it blocked a candidate better by 10 points.
        f1_candidate, f1_champion = _f1(labels, candidate, k), _f1(labels, champion, k)
        regression = bool(paired.regression) and f1_candidate < f1_champion
        per_class[emotion] = {
            "faces": count,
            "candidate_recall": paired.candidate,
            "champion_recall": paired.champion,
            "change": paired.candidate - paired.champion,
            "change_upper_bound": paired.change_upper_bound,
            "mcnemar_p_worse": paired.p_worse,
            "candidate_f1": f1_candidate,
            "champion_f1": f1_champion,
            "recall_drop_paid_by_precision": bool(paired.regression) and not regression,
            "regression": regression,
        }
        if regression:
            reasons.append(
                f"{emotion} recall fell from {paired.champion:.3f} to {paired.candidate:.3f} on {count} faces "
                f"(McNemar exact p = {paired.p_worse:.3g} that it is worse, needs >= {thresholds.alpha}; "
                f"allowed drop {thresholds.max_class_recall_drop})"
            )
    if champion_adopted and result["real_faces"] == 0 and not thresholds.allow_synthetic_over_real:
        reasons.append(
            "the champion is a team's own (adopted) model and none of the held-out faces is real (no "
            "source=batch, corrections or labelled faces yet): better scores on synthetic faces alone do not "
            "replace it (MOODLOOP_ALLOW_SYNTHETIC_OVER_REAL=1 allows it)"
        )
    for name, row in (result.get("bias") or {}).get("slices", {}).items():
        if row.get("regression"):
            reasons.append(
                f"slice {name}: accuracy fell from {row['champion_accuracy']:.3f} to {row['accuracy']:.3f} on "
                f"{row['faces']} faces (McNemar exact p = {row['mcnemar_p_worse']:.3g} that it is worse, needs >= "
                f"{thresholds.alpha}; allowed drop {thresholds.max_slice_accuracy_drop})"
            )
    result.update(per_class=per_class, verdict="BLESSED" if not reasons else "REJECTED", blessed=not reasons)
    result["reasons"] = reasons
    return result


# ---------------------------------------------------------------- the TFX component


class GateReport(artifact.Artifact):
    """The A/B gate's verdict, numbers (JSON) and picture (PNG)."""

    TYPE_NAME = "MoodloopGateReport"


class ReferenceProfile(artifact.Artifact):
    """The candidate's held-out faces as inference-log rows (image properties, probabilities,
    embedding, true label): what the drift jobs compare live traffic with. The A/B gate declares
    it as an output; the Pusher takes it as an input and puts it in the version at REFERENCE_PROFILE."""

    TYPE_NAME = "MoodloopReferenceProfile"


def reference_profile_file(profile: artifact.Artifact) -> str:
    """The profile's file inside its artifact: the same relative path as in a pushed version."""
    return os.path.join(profile.uri, REFERENCE_PROFILE)


def accuracy_estimator_file(profile: artifact.Artifact) -> str:
    """The candidate's accuracy estimator, beside its profile in the same artifact."""
    return os.path.join(profile.uri, ACCURACY_ESTIMATOR)


def held_out_pixels(serialized: list[bytes]) -> np.ndarray:
    """[N, 48, 48] uint8 grey faces of serialized examples, as the model's doors decode them."""
    from PIL import Image

    from components.model_contract import example_images

    faces = []
    for encoded in example_images(serialized):
        grey = encoded_images.decode_grey(encoded)  # curated faces decode: the door checked them
        if grey.shape != (FACE_SIZE, FACE_SIZE):
            grey = np.asarray(Image.fromarray(grey).resize((FACE_SIZE, FACE_SIZE), Image.BICUBIC))
        faces.append(grey)
    return np.stack(faces).astype(np.uint8)


def champion_dir(model_base: str, serving_config: str, model_name: str) -> str | None:
    """The folder of the champion (moodloop/core/rollout.py: `stable`, else the newest), else None."""
    version = Rollout(Path(serving_config), model_name).champion(model_base)
    return None if version is None else str(Path(model_base) / str(version))


def split_examples(examples: list, split: str = "eval") -> tuple[list[bytes], np.ndarray]:
    """Serialized tf.Examples of one split of every span, and their labels."""
    serialized, labels, _ = split_examples_by_span(examples, split)
    return serialized, labels


def split_examples_by_span(examples: list, split: str = "eval") -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """Serialized tf.Examples of one split of every span, their labels, and each one's span."""
    import tensorflow as tf

    serialized: list[bytes] = []
    spans: list[int] = []
    for item in examples:
        files = sorted(glob.glob(os.path.join(artifact_utils.get_split_uri([item], split), "*")))
        records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")] if files else []
        serialized += records
        spans += [span_of(item)] * len(records)
    labels = np.array(
        [tf.train.Example.FromString(s).features.feature[FEATURE_LABEL].int64_list.value[0] for s in serialized],
        dtype=np.int64,
    )
    return serialized, labels, np.array(spans, dtype=np.int64)


def current_traffic(spans: np.ndarray, face_slices: list[dict[str, str]]) -> np.ndarray:
    """The faces that stand for what users send now: the newest span's, when that span is live faces
    labelled on the loop's request (source=labelled: the labelling queue's batch after a drift).
    Otherwise none, and the gate judges on every held-out face: a regular batch is no more today's
    traffic than the spans before it."""
    if not len(spans):
        return np.zeros(0, dtype=bool)
    newest = spans == spans.max()
    labelled = np.array([face.get(SOURCE_ATTRIBUTE) == SOURCE_LABELLED for face in face_slices], dtype=bool)
    return newest & labelled if labelled[newest].all() else np.zeros(len(spans), dtype=bool)


def feedback_examples(pool: live_faces.Pool | None) -> tuple[list[bytes], np.ndarray]:
    """The kept live faces since the drift that carry a feedback label (components/live_faces.py), as
    held-out tf.Examples of the curated contract with the slice source=feedback: typical current
    traffic that no training set holds. The faces the loop asked about are the champion's hard
    ones (the queue chose those it was unsure of); these are what users send."""
    import tensorflow as tf

    if pool is None:
        return [], np.zeros(0, np.int64)
    encoded, labels = live_faces.feedback_labelled_faces(pool, MOST_FEEDBACK_FACES)
    examples = []
    for png, label in zip(encoded, labels, strict=True):
        pixels = decode_grey(png)
        attributes = (property_buckets(pixels) if pixels is not None else {}) | {SOURCE_ATTRIBUTE: SOURCE_FEEDBACK}
        feature = {
            FEATURE_IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
            FEATURE_LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
            FEATURE_SLICES: tf.train.Feature(bytes_list=tf.train.BytesList(value=slices.encode(attributes))),
        }
        examples.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return examples, labels


def example_slices(serialized: list[bytes]) -> list[dict[str, str]]:
    """Each face's slice attributes (the curated contract's `slice` feature; {} on older spans)."""
    import tensorflow as tf

    return [
        slices.decode(tf.train.Example.FromString(s).features.feature[FEATURE_SLICES].bytes_list.value)
        for s in serialized
    ]


def predict(model_dir: str, serialized: list[bytes], batch: int = 256) -> dict[str, np.ndarray]:
    """The model's outputs for serialized tf.Examples, through its serving_examples signature."""
    import tensorflow as tf

    signature = tf.saved_model.load(model_dir).signatures[SIGNATURE_EXAMPLES]
    chunks = [signature(examples=tf.constant(serialized[i : i + batch])) for i in range(0, len(serialized), batch)]
    return {key: np.concatenate([c[key].numpy() for c in chunks]) for key in (chunks[0] if chunks else {})}


def predict_classes(model_dir: str, serialized: list[bytes]) -> np.ndarray:
    """The model's answer (class id) per serialized tf.Example."""
    if not serialized:
        return np.zeros(0, np.int64)
    return predict(model_dir, serialized)[OUTPUT_PROBABILITIES].argmax(axis=1)


def write_reference_profile(path: str, serialized: list[bytes], labels: np.ndarray, outputs: dict) -> int:
    """The candidate's eval faces as inference-log rows (the inference-log contract): the reference for drift."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tensorflow as tf

    rows = []
    for i, (example, label) in enumerate(zip(serialized, labels, strict=True)):
        image = tf.train.Example.FromString(example).features.feature[FEATURE_IMAGE].bytes_list.value[0]
        record = Prediction(
            request_id=f"reference-{i}",
            instance=0,
            client_id="",
            model_name="",
            model_version=0,
            model_label="reference",
            signature=SIGNATURE_EXAMPLES,
            api="reference",
            latency_ms=0.0,
            probabilities=outputs[OUTPUT_PROBABILITIES][i],
            pixels=decode_grey(image),
            embedding=outputs[OUTPUT_EMBEDDING][i] if OUTPUT_EMBEDDING in outputs else None,
        )
        rows.append({**prediction_row(record), "label": EMOTIONS[int(label)]})
    schema = PREDICTION_SCHEMA.append(pa.field("label", pa.string()))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return len(rows)


def describe(result: dict) -> list[str]:
    lines = [f"A/B gate: {result['verdict']} on {result['examples']} held-out faces"]
    judged = result.get("judged") or {"on": "all"}
    if judged["on"] != "all" or "MOODLOOP_GATE_MIN_CURRENT_EXAMPLES" in judged.get("why", ""):
        lines.append(f"  judged on {judged['why']}")
    lines.append(f"  candidate accuracy {result['candidate_accuracy']:.4f}")
    if result.get("champion_accuracy") is not None:
        low, high = result["accuracy_difference_ci"]
        m = result["mcnemar"]
        lines.append(
            f"  champion accuracy {result['champion_accuracy']:.4f}; difference {result['accuracy_difference']:+.4f} "
            f"(95% bootstrap CI {low:+.4f} .. {high:+.4f}); McNemar: candidate-only {m['candidate_only']}, "
            f"champion-only {m['champion_only']}, p = {m['p_value']:.3g}"
        )
    elif result["examples"] >= result["thresholds"]["min_examples"]:
        lines.append("  no champion yet: the accuracy floor alone decides")
    earlier = result.get("earlier")
    if earlier:
        lines.append(
            f"  earlier traffic ({earlier['faces']} faces): candidate {earlier['candidate_accuracy']:.4f}, champion "
            f"{earlier['champion_accuracy']:.4f}, McNemar p = {earlier['mcnemar_p_worse']:.3g} that it is worse"
        )
    if "real_faces" in result:
        adopted = "; the champion is a team's own (adopted) model" if result.get("champion_adopted") else ""
        lines.append(f"  real held-out faces (source=batch, corrections or labelled): {result['real_faces']}{adopted}")
    bias = result.get("bias")
    if bias:
        guarded = sum(row["guarded"] for row in bias["slices"].values())
        lines.append(
            f"  bias audit: {len(bias['slices'])} slices, {guarded} guarded (>= {bias['min_slice_examples']} faces)"
        )
        if bias["largest_gap"]:
            gap = bias["largest_gap"]
            lines.append(
                f"  largest gap: {gap['attribute']} {gap['accuracy_gap']:.3f} accuracy "
                f"({gap['best']} {bias['slices'][slices.name(gap['attribute'], gap['best'])]['accuracy']:.3f}, "
                f"{gap['worst']} {bias['slices'][slices.name(gap['attribute'], gap['worst'])]['accuracy']:.3f})"
            )
    lines += [f"  - {reason}" for reason in result["reasons"]]
    return lines


@component
def ABGate(
    model: InputArtifact[standard_artifacts.Model],
    examples: InputArtifact[List[standard_artifacts.Examples]],  # noqa: UP006
    evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
    blessing: OutputArtifact[standard_artifacts.ModelBlessing],
    report: OutputArtifact[GateReport],
    reference_profile: OutputArtifact[ReferenceProfile],
    model_base: Parameter[str],
    serving_config: Parameter[str],
    model_name: Parameter[str],
    # The thresholds (moodloop.core.settings.GateSettings, where their defaults live), one by one:
    # a TFX component's parameters are primitives.
    min_accuracy: Parameter[float],
    max_accuracy_drop: Parameter[float],
    alpha: Parameter[float],
    min_examples: Parameter[int],
    max_class_recall_drop: Parameter[float],
    min_slice_examples: Parameter[int],
    max_slice_accuracy_drop: Parameter[float],
    min_current_examples: Parameter[int],
    allow_synthetic_over_real: Parameter[bool],
    estimator_windows: Parameter[int],
    estimator_window_faces: Parameter[int],
    status_dir: Parameter[str] = "",
    # After a drift, where the kept live faces are (JSON of components/live_faces.py's Pool; "null":
    # not after a drift): those with a feedback label judge as current traffic.
    feedback_pool: Parameter[str] = "",
) -> None:
    """Champion vs candidate on the same held-out faces; blesses (or not) for the Pusher. The
    verdict and its picture are also the latest gate status (moodloop/core/status.py) in `status_dir`."""
    from tfx.utils import path_utils

    from components import plots

    thresholds = GateSettings(
        min_accuracy=min_accuracy,
        max_accuracy_drop=max_accuracy_drop,
        alpha=alpha,
        min_examples=min_examples,
        max_class_recall_drop=max_class_recall_drop,
        min_slice_examples=min_slice_examples,
        max_slice_accuracy_drop=max_slice_accuracy_drop,
        min_current_examples=min_current_examples,
        allow_synthetic_over_real=allow_synthetic_over_real,
        estimator_windows=estimator_windows,
        estimator_window_faces=estimator_window_faces,
    )
    serialized, labels, spans = split_examples_by_span(examples, "eval")
    outputs = predict(path_utils.serving_model_path(model.uri), serialized)
    champion_path = champion_dir(model_base, serving_config, model_name)
    face_slices = example_slices(serialized)
    current = current_traffic(spans, face_slices)
    # The curated held-out faces (above) make the reference profile and the accuracy estimator;
    # the feedback-labelled live faces since a drift only judge, beside them.
    live, live_labels = feedback_examples(live_faces.Pool.of(json.loads(feedback_pool or "null")))
    if live:
        log.info(f"{len(live)} feedback-labelled live faces since the drift judge as current traffic too")
    judged_faces = serialized + live
    judged_labels = np.concatenate([labels, live_labels])
    candidate = np.concatenate(
        [outputs[OUTPUT_PROBABILITIES].argmax(axis=1), predict_classes(path_utils.serving_model_path(model.uri), live)]
    )
    champion = predict_classes(champion_path, judged_faces) if champion_path else None
    adopted = bool(champion_path) and os.path.exists(os.path.join(champion_path, ADOPTED_RECORD))
    face_slices += example_slices(live)
    current = np.concatenate([current, np.ones(len(live), dtype=bool)]) if champion is not None else None
    result = decide(judged_labels, candidate, champion, thresholds, face_slices, adopted, current)
    result.update(champion=champion_path, candidate=model.uri, tfma_evaluation=evaluation.uri)

    os.makedirs(report.uri, exist_ok=True)
    profile = reference_profile_file(reference_profile)  # the Pusher puts it in the pushed version
    faces = write_reference_profile(profile, serialized, labels, outputs)
    log.info(f"reference profile of {faces} held-out faces: {profile}")
    # How to know the candidate's accuracy without labels, fitted on the same held-out faces; it
    # travels with the profile (the Pusher puts both in the version). Only for a blessed candidate:
    # a refused one is never pushed, and the fit costs its model 40,000 answers by default.
    if result["blessed"]:
        estimator = accuracy_estimator.fit(
            path_utils.serving_model_path(model.uri),
            held_out_pixels(serialized),
            labels,
            thresholds.estimator_windows,
            thresholds.estimator_window_faces,
        )
        accuracy_estimator.write(estimator, accuracy_estimator_file(reference_profile))
    with open(os.path.join(report.uri, GATE_REPORT_JSON), "w") as fh:
        json.dump(result, fh, indent=1)
    plots.gate_report(result, os.path.join(report.uri, GATE_REPORT_PNG))
    with open(os.path.join(report.uri, BIAS_REPORT_JSON), "w") as fh:
        json.dump({"verdict": result["verdict"], **result["bias"]}, fh, indent=1)
    plots.bias_report(result["bias"], result["verdict"], os.path.join(report.uri, BIAS_REPORT_PNG))
    if status_dir:
        shown = ("verdict", "reasons", "examples", "judged", "candidate_accuracy", "champion_accuracy")
        latest = {key: result.get(key) for key in shown} | {"candidate": model.uri}
        latest["largest_slice_gap"] = result["bias"]["largest_gap"]
        try:
            pictures = {
                status.GATE_IMAGE: os.path.join(report.uri, GATE_REPORT_PNG),
                status.BIAS_IMAGE: os.path.join(report.uri, BIAS_REPORT_PNG),
            }
            status.write_status(status_dir, status.GATE, latest, pictures)
        except OSError as error:  # the page's panel misses a verdict; the blessing does not depend on it
            log.error(f"could not record the gate verdict for the model panel: {error}")
    # The ModelBlessing contract the Pusher and LatestBlessedModelStrategy read (as the Evaluator writes it).
    blessing.set_int_custom_property("blessed", int(result["blessed"]))
    blessing.set_string_custom_property("current_model", model.uri)
    blessing.set_int_custom_property("current_model_id", model.id)
    Path(blessing.uri, "BLESSED" if result["blessed"] else "NOT_BLESSED").touch()
    log.info("\n".join(describe(result)))
    pictures = ", ".join((GATE_REPORT_PNG, BIAS_REPORT_JSON, BIAS_REPORT_PNG))
    log.info(f"gate report: {os.path.join(report.uri, GATE_REPORT_JSON)}, {pictures}")
