"""The offline A/B gate: candidate and champion predict the same held-out faces, and statistics
decide, not a single threshold.

- McNemar's exact test on the paired per-face correctness: is the candidate better, beyond chance?
- A paired bootstrap confidence interval of the accuracy difference (reported).
- Per-class recall non-regression: disgust is ~1.5 % of FER2013, and a collapse there must not
  hide inside a better overall accuracy. A class blocks when its recall drops by more than the
  allowed drop and the drop is significant by the exact McNemar test within the class (a
  percentile bootstrap is far too sure on a class of a few faces: it blocked 2 of 4 faces).
  The bootstrap bound of each class's change is reported.
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
from tfx import v1 as tfx
from tfx.types import artifact, artifact_utils, standard_artifacts

from moodloop import models_config, status
from moodloop.contracts import (
    EMOTIONS,
    FEATURE_IMAGE,
    FEATURE_LABEL,
    OUTPUT_EMBEDDING,
    OUTPUT_PROBABILITIES,
    SIGNATURE_EXAMPLES,
)
from moodloop.image_properties import decode_grey
from moodloop.log_records import PREDICTION_SCHEMA, Prediction, prediction_row
from moodloop.settings import GateSettings

log = logging.getLogger(__name__)

GATE_REPORT_JSON = "gate_report.json"
GATE_REPORT_PNG = "gate_report.png"
PROFILE_FILE = "reference_profile.parquet"


def mcnemar_exact_p(candidate_only: int, champion_only: int) -> float:
    """One-sided exact McNemar p-value for "the candidate is better": among the faces exactly one
    model gets right, P(the candidate wins at least this many | both equally good)."""
    from scipy.stats import binom

    discordant = candidate_only + champion_only
    if discordant == 0:
        return 1.0
    return float(binom.sf(candidate_only - 1, discordant, 0.5))


def _bootstrap_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `values` over bootstrap resamples (paired: the same faces for both models)."""
    if len(values) == 0:
        return np.zeros(resamples)
    index = rng.integers(0, len(values), size=(resamples, len(values)))
    return values[index].mean(axis=1)


def decide(labels: np.ndarray, candidate: np.ndarray, champion: np.ndarray | None, thresholds: GateSettings) -> dict:
    """The verdict and its numbers. `candidate` / `champion` are predicted class ids per face.

    The result (report.json's `gate`):
    - `verdict`: BLESSED, REJECTED, or UNDECIDED (fewer held-out faces than `min_examples`);
      `blessed`: the verdict as a boolean; `reasons`: one sentence per rule that refused;
    - `examples`, `candidate_accuracy`, `thresholds`, `has_champion`;
    - with a champion: `champion_accuracy`, `accuracy_difference` (candidate - champion) and its
      bootstrap interval `accuracy_difference_ci`, `mcnemar` (faces only the candidate got right,
      only the champion got right, and the one-sided exact p-value that the candidate is better);
    - `per_class`: per emotion, its `faces`, both recalls, their `change`, the bootstrap
      `change_upper_bound`, `mcnemar_p_worse` (exact, within the class) and `regression` (a drop
      beyond `max_class_recall_drop` that is significant: it blocks the candidate).
    """
    rng = np.random.default_rng(0)  # the same faces and models, the same verdict
    n = len(labels)
    cand_correct = (candidate == labels).astype(np.float64)
    accuracy = float(cand_correct.mean()) if n else 0.0
    result: dict = {
        "examples": n,
        "candidate_accuracy": accuracy,
        "thresholds": dataclasses.asdict(thresholds),
        "has_champion": champion is not None,
        "reasons": [],
    }
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

    champ_correct = (champion == labels).astype(np.float64)
    candidate_only = int(((cand_correct == 1) & (champ_correct == 0)).sum())
    champion_only = int(((cand_correct == 0) & (champ_correct == 1)).sum())
    p_value = mcnemar_exact_p(candidate_only, champion_only)
    diffs = _bootstrap_means(cand_correct - champ_correct, thresholds.bootstrap, rng)
    low, high = np.quantile(diffs, [thresholds.alpha / 2, 1 - thresholds.alpha / 2])
    result.update(
        champion_accuracy=float(champ_correct.mean()),
        accuracy_difference=float(cand_correct.mean() - champ_correct.mean()),
        accuracy_difference_ci=[float(low), float(high)],
        mcnemar={"candidate_only": candidate_only, "champion_only": champion_only, "p_value": p_value},
    )
    if p_value >= thresholds.alpha:
        reasons.append(
            f"not better than the champion beyond chance: accuracy {accuracy:.4f} against the champion's "
            f"{result['champion_accuracy']:.4f}, McNemar exact p = {p_value:.3g} (needs < {thresholds.alpha})"
        )

    per_class = {}
    for k, emotion in enumerate(EMOTIONS):
        members = labels == k
        count = int(members.sum())
        if count == 0:
            continue
        cand_recall, champ_recall = float(cand_correct[members].mean()), float(champ_correct[members].mean())
        diff_boot = _bootstrap_means(cand_correct[members] - champ_correct[members], thresholds.bootstrap, rng)
        upper = float(np.quantile(diff_boot, 1 - thresholds.alpha))  # one-sided upper bound of the change
        change = cand_correct[members] - champ_correct[members]  # +1: only the candidate right, -1: only the champion
        lost, gained = int((change < 0).sum()), int((change > 0).sum())
        p_worse = mcnemar_exact_p(lost, gained)  # one-sided: the champion is better on this class
        regression = (cand_recall - champ_recall) < -thresholds.max_class_recall_drop and p_worse < thresholds.alpha
        per_class[emotion] = {
            "faces": count,
            "candidate_recall": cand_recall,
            "champion_recall": champ_recall,
            "change": cand_recall - champ_recall,
            "change_upper_bound": upper,
            "mcnemar_p_worse": p_worse,
            "regression": bool(regression),
        }
        if regression:
            reasons.append(
                f"{emotion} recall fell from {champ_recall:.3f} to {cand_recall:.3f} on {count} faces "
                f"(McNemar exact p = {p_worse:.3g} that it is worse, needs >= {thresholds.alpha}; "
                f"allowed drop {thresholds.max_class_recall_drop})"
            )
    result.update(per_class=per_class, verdict="BLESSED" if not reasons else "REJECTED", blessed=not reasons)
    result["reasons"] = reasons
    return result


# ---------------------------------------------------------------- the TFX component


class GateReport(artifact.Artifact):
    """The A/B gate's verdict, numbers (JSON) and picture (PNG)."""

    TYPE_NAME = "MoodloopGateReport"


def champion_dir(model_base: str, serving_config: str, model_name: str) -> str | None:
    """The SavedModel users get now: the `stable` label, else the newest version, else None."""

    base = Path(model_base)
    versions = models_config.version_folders(base)
    if not versions:
        return None
    stable = None
    if Path(serving_config).exists():
        policy = models_config.policies(models_config.read(Path(serving_config))).get(model_name)
        stable = policy.labels.get(models_config.STABLE) if policy else None
    version = stable if stable in versions else max(versions)
    return str(base / str(version))


def split_examples(examples: list, split: str = "eval") -> tuple[list[bytes], np.ndarray]:
    """Serialized tf.Examples of one split of every span, and their labels."""
    import tensorflow as tf

    files = []
    for item in examples:
        files += sorted(glob.glob(os.path.join(artifact_utils.get_split_uri([item], split), "*")))
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    labels = np.array(
        [tf.train.Example.FromString(s).features.feature[FEATURE_LABEL].int64_list.value[0] for s in serialized]
    )
    return serialized, labels


def predict(model_dir: str, serialized: list[bytes], batch: int = 256) -> dict[str, np.ndarray]:
    """The model's outputs for serialized tf.Examples, through its serving_examples signature."""
    import tensorflow as tf

    signature = tf.saved_model.load(model_dir).signatures[SIGNATURE_EXAMPLES]
    chunks = [signature(examples=tf.constant(serialized[i : i + batch])) for i in range(0, len(serialized), batch)]
    return {key: np.concatenate([c[key].numpy() for c in chunks]) for key in (chunks[0] if chunks else {})}


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
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return len(rows)


def describe(result: dict) -> list[str]:
    lines = [f"A/B gate: {result['verdict']} on {result['examples']} held-out faces"]
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
    lines += [f"  - {reason}" for reason in result["reasons"]]
    return lines


@tfx.dsl.components.component
def ABGate(
    model: tfx.dsl.components.InputArtifact[standard_artifacts.Model],
    examples: tfx.dsl.components.InputArtifact[List[standard_artifacts.Examples]],  # noqa: UP006
    evaluation: tfx.dsl.components.InputArtifact[standard_artifacts.ModelEvaluation],
    blessing: tfx.dsl.components.OutputArtifact[standard_artifacts.ModelBlessing],
    report: tfx.dsl.components.OutputArtifact[GateReport],
    model_base: tfx.dsl.components.Parameter[str],
    serving_config: tfx.dsl.components.Parameter[str],
    model_name: tfx.dsl.components.Parameter[str],
    # The thresholds (moodloop.settings.GateSettings, where their defaults live), one by one:
    # a TFX component's parameters are primitives.
    min_accuracy: tfx.dsl.components.Parameter[float],
    max_accuracy_drop: tfx.dsl.components.Parameter[float],
    alpha: tfx.dsl.components.Parameter[float],
    min_examples: tfx.dsl.components.Parameter[int],
    max_class_recall_drop: tfx.dsl.components.Parameter[float],
    bootstrap: tfx.dsl.components.Parameter[int],
    status_dir: tfx.dsl.components.Parameter[str] = "",
) -> None:
    """Champion vs candidate on the same held-out faces; blesses (or not) for the Pusher. The
    verdict and its picture are also the latest gate status (moodloop/status.py) in `status_dir`."""
    from tfx.utils import path_utils

    from components import plots

    thresholds = GateSettings(
        min_accuracy=min_accuracy,
        max_accuracy_drop=max_accuracy_drop,
        alpha=alpha,
        min_examples=min_examples,
        max_class_recall_drop=max_class_recall_drop,
        bootstrap=bootstrap,
    )
    serialized, labels = split_examples(examples, "eval")
    outputs = predict(path_utils.serving_model_path(model.uri), serialized)
    candidate = outputs[OUTPUT_PROBABILITIES].argmax(axis=1)
    champion_path = champion_dir(model_base, serving_config, model_name)
    champion = predict(champion_path, serialized)[OUTPUT_PROBABILITIES].argmax(axis=1) if champion_path else None
    result = decide(labels, candidate, champion, thresholds)
    result.update(champion=champion_path, candidate=model.uri, tfma_evaluation=evaluation.uri)

    os.makedirs(report.uri, exist_ok=True)
    # The reference profile travels with the model: the Pusher copies it into the pushed version.
    profile = os.path.join(report.uri, PROFILE_FILE)
    faces = write_reference_profile(profile, serialized, labels, outputs)
    blessing.set_string_custom_property("reference_profile", profile)
    log.info(f"reference profile of {faces} held-out faces: {profile}")
    with open(os.path.join(report.uri, GATE_REPORT_JSON), "w") as fh:
        json.dump(result, fh, indent=1)
    plots.gate_report(result, os.path.join(report.uri, GATE_REPORT_PNG))
    if status_dir:
        shown = ("verdict", "reasons", "examples", "candidate_accuracy", "champion_accuracy")
        latest = {key: result.get(key) for key in shown} | {"candidate": model.uri}
        try:
            picture = {status.GATE_IMAGE: os.path.join(report.uri, GATE_REPORT_PNG)}
            status.write_status(status_dir, status.GATE, latest, picture)
        except OSError as error:  # the page's panel misses a verdict; the blessing does not depend on it
            log.error(f"could not record the gate verdict for the model panel: {error}")
    # The ModelBlessing contract the Pusher and LatestBlessedModelStrategy read (as the Evaluator writes it).
    blessing.set_int_custom_property("blessed", int(result["blessed"]))
    blessing.set_string_custom_property("current_model", model.uri)
    blessing.set_int_custom_property("current_model_id", model.id)
    Path(blessing.uri, "BLESSED" if result["blessed"] else "NOT_BLESSED").touch()
    log.info("\n".join(describe(result)))
    log.info(f"gate report: {os.path.join(report.uri, GATE_REPORT_JSON)} and {GATE_REPORT_PNG}")
