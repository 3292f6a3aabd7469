"""PNG plots a person reads: training curves and the confusion matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np

TRAINING_CURVES_PNG = "training_curves.png"
CONFUSION_MATRIX_PNG = "confusion_matrix.png"


def training_curves(history: Mapping[str, Sequence[float]], path: str) -> str:
    """Loss and accuracy per epoch, train vs validation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, title in ((axes[0], "loss", "Loss"), (axes[1], "sparse_categorical_accuracy", "Accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + metric)
            if values:
                epochs = np.arange(1, len(values) + 1)
                ax.plot(epochs, values, style, marker="o", label="validation" if prefix else "train")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Training curves")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str, title: str = "") -> str:
    """Row-normalised confusion matrix (rows = true class), with counts in each cell."""
    matrix = np.asarray(matrix, dtype=float)
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.1 * n + 2, 1.0 * n + 1.5))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), [f"{c} ({int(t)})" for c, t in zip(class_names, totals[:, 0], strict=True)])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (faces)")
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{share[i, j]:.0%}\n{int(matrix[i, j])}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.55 else "black",
            )
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(title or f"Confusion matrix (accuracy {accuracy:.1%})")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def gate_report(result: dict, path: str) -> str:
    """The A/B gate at a glance: per-class recall, candidate vs champion, and the verdict."""
    per_class = result.get("per_class") or {}
    fig, ax = plt.subplots(figsize=(9, 4.2))
    names = list(per_class) or ["all"]
    x = np.arange(len(names))
    if per_class:
        champion = [per_class[n]["champion_recall"] for n in names]
        candidate = [per_class[n]["candidate_recall"] for n in names]
        ax.bar(x - 0.2, champion, 0.4, label="champion", color="#9aa5b1")
        bars = ax.bar(x + 0.2, candidate, 0.4, label="candidate", color="#2b7bba")
        for bar, name in zip(bars, names, strict=True):
            if per_class[name]["regression"]:
                bar.set_color("#d9534f")
                ax.annotate(
                    "regression",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    color="#d9534f",
                )
        ax.set_xticks(x, [f"{n}\n({per_class[n]['faces']})" for n in names])
        ax.set_ylabel("recall on held-out faces")
        ax.legend(loc="upper center", ncol=2, frameon=False)
    else:
        ax.bar([0], [result.get("candidate_accuracy", 0)], 0.4, color="#2b7bba", label="candidate accuracy")
        ax.axhline(result["thresholds"]["min_accuracy"], color="#d9534f", linestyle="--", label="floor")
        ax.set_xticks([0], ["no champion: accuracy vs floor"])
        ax.legend()
    ax.set_ylim(0, 1.15)
    ax.grid(axis="y", alpha=0.3)
    title = f"A/B gate: {result['verdict']} ({result['examples']} faces)"
    if result.get("mcnemar"):
        low, high = result["accuracy_difference_ci"]
        judged = result.get("judged") or {}
        on = f" on {judged['faces']} faces of current traffic" if judged.get("on") == "current" else ""
        title += (
            f"\naccuracy{on} {result['candidate_accuracy']:.3f} vs {result['champion_accuracy']:.3f}, "
            f"diff CI [{low:+.3f}, {high:+.3f}], McNemar p = {result['mcnemar']['p_value']:.3g}"
        )
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def bias_report(bias: dict, verdict: str, path: str) -> str:
    """The bias audit at a glance: one row per slice, grouped by attribute; accuracy (left) and
    recall averaged over emotions (right) of the candidate as bars, the champion's as ticks.
    Red: a regression that blocks; grey: too few faces to be guarded."""
    rows = sorted(bias["slices"].items(), key=lambda item: (item[1]["attribute"], item[1]["value"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.32 * max(len(rows), 3) + 1.8), sharey=True)
    y = np.arange(len(rows))[::-1]
    for ax, metric, title in ((axes[0], "accuracy", "accuracy"), (axes[1], "recall", "recall (mean over emotions)")):
        colours = [
            "#d9534f" if row.get("regression") else ("#2b7bba" if row["guarded"] else "#c5ccd3") for _, row in rows
        ]
        ax.barh(y, [row[metric] for _, row in rows], 0.7, color=colours, label="candidate")
        champion = [row.get(f"champion_{metric}") for _, row in rows]
        if any(value is not None for value in champion):
            ax.scatter(champion, y, marker="|", s=160, color="black", label="champion", zorder=3)
        for yi, (_, row) in zip(y, rows, strict=True):
            ax.text(row[metric] + 0.01, yi, f"{row[metric]:.2f}", va="center", fontsize=7)
        ax.set_xlim(0, 1.08)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [f"{name} ({row['faces']})" for name, row in rows], fontsize=8)
    if rows and any(row.get("champion_accuracy") is not None for _, row in rows):
        axes[1].legend(loc="lower right", fontsize=8)
    gap = bias.get("largest_gap")
    widest = (
        f"largest gap: {gap['attribute']} {gap['accuracy_gap']:.3f} accuracy ({gap['best']} vs {gap['worst']})"
        if gap
        else "no attribute has two guarded slices"
    )
    fig.suptitle(
        f"Bias audit ({verdict}): slices with >= {bias['min_slice_examples']} faces are guarded; {widest}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


RELIABILITY_PNG = "reliability_diagram.png"


def reliability_diagram(
    before: Mapping, after: Mapping, ece: tuple[float, float], temperature: float, path: str
) -> str:
    """Accuracy against confidence per bin, before and after temperature scaling; the diagonal is
    perfect calibration. Bars below it: over-confident."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    for ax, rows, title in (
        (axes[0], before, f"Before (ECE {ece[0]:.3f})"),
        (axes[1], after, f"After, T = {temperature:.2f} (ECE {ece[1]:.3f})"),
    ):
        lows, highs = np.asarray(rows["bin_low"]), np.asarray(rows["bin_high"])
        ax.bar(
            lows, rows["accuracy"], width=highs - lows, align="edge", edgecolor="black", alpha=0.75, label="accuracy"
        )
        ax.bar(
            lows,
            rows["confidence"],
            width=highs - lows,
            align="edge",
            fill=False,
            edgecolor="tab:red",
            hatch="//",
            label="mean confidence (the gap: miscalibration)",
        )
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top probability)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left")
    fig.suptitle("Reliability diagram on held-out faces")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
