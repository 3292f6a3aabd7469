"""The landing-batch data contract, checked with Great Expectations before anything is curated.

The readers turn a batch into one row per item (CSV row or file) with the facts the contract
needs; the GX suite below decides. A batch that fails any expectation is quarantined whole with
`contract.json` (GX's own validation result plus our summary) and `REPORT.md` for people.

Runs in the orchestration env (GX 1.x, pandas<3); no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from data.curated import face_hash
from data.readers import ReadResult
from moodloop.core.contracts import EMOTIONS, NUM_CLASSES
from moodloop.core.slices import MAX_VALUES_PER_ATTRIBUTE

SUITE_NAME = "landing_batch_contract"


@dataclasses.dataclass(frozen=True)
class ContractLimits:
    max_faces: int = 100_000  # per batch
    min_faces: int = 1
    max_values_per_attribute: int = MAX_VALUES_PER_ATTRIBUTE  # an extra column with more is an identifier


@dataclasses.dataclass
class ContractResult:
    passed: bool
    failures: list[dict[str, Any]]  # one per failed expectation: what, count, examples
    class_counts: dict[str, int]
    items: int
    faces: int
    gx_result: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "items": self.items,
            "faces": self.faces,
            "class_counts": self.class_counts,
            "failures": self.failures,
        }


ATTRIBUTE_COLUMN = "attribute:"  # the frame's column of a slice attribute (an extra batch column)


def attribute_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(ATTRIBUTE_COLUMN)]


def batch_frame(result: ReadResult) -> pd.DataFrame:
    """One row per item of the batch: the facts each expectation checks."""
    rows = []
    for face in result.faces:
        rows.append(
            {
                "source": face.source,
                "kind": "ok",
                "reason": "",
                "label": face.label,
                "face_hash": face_hash(face.pixels),
                **{ATTRIBUTE_COLUMN + key: value for key, value in face.attributes.items()},
            }
        )
    for rejected in result.rejected:
        rows.append(
            {
                "source": rejected.source,
                "kind": rejected.kind,
                "reason": rejected.reason,
                "label": -1,
                "face_hash": None,
            }
        )
    attributes = sorted({ATTRIBUTE_COLUMN + key for face in result.faces for key in face.attributes})
    frame = pd.DataFrame(rows, columns=["source", "kind", "reason", "label", "face_hash", *attributes])
    for kind in ("layout", "label", "pixels", "unreadable", "too_large"):
        frame[f"ok_{kind}"] = frame["kind"] != kind
    return frame


# (expectation, what it means for a person) — the order is the report's order.
def _expectations(limits: ContractLimits, attributes: list[str]) -> list[tuple[Any, str]]:
    import great_expectations as gx

    e = gx.expectations
    per_attribute = [
        (
            e.ExpectColumnUniqueValueCountToBeBetween(column=column, max_value=limits.max_values_per_attribute),
            f"the extra column `{column.removeprefix(ATTRIBUTE_COLUMN)}` groups faces: at most "
            f"{limits.max_values_per_attribute} distinct values (more is an identifier, not a slice)",
        )
        for column in attributes
    ]
    return [
        (
            e.ExpectTableRowCountToBeBetween(min_value=limits.min_faces, max_value=limits.max_faces),
            f"the batch holds {limits.min_faces}..{limits.max_faces} items",
        ),
        (
            e.ExpectColumnValuesToBeInSet(column="ok_layout", value_set=[True]),
            "every row and file follows the layout (header, columns, folders, files that exist)",
        ),
        (
            e.ExpectColumnValuesToBeInSet(column="ok_unreadable", value_set=[True]),
            "every image decodes (not empty, not truncated, an image format)",
        ),
        (
            e.ExpectColumnValuesToBeInSet(column="ok_too_large", value_set=[True]),
            "every image is within the size limits (bytes and pixels)",
        ),
        (
            e.ExpectColumnValuesToBeInSet(column="ok_pixels", value_set=[True]),
            "every CSV row has 2304 pixel values in 0..255",
        ),
        (
            e.ExpectColumnValuesToBeInSet(column="ok_label", value_set=[True]),
            f"every label is one of the seven emotions ({', '.join(EMOTIONS)}) or 0..6",
        ),
        (e.ExpectColumnValuesToBeUnique(column="face_hash"), "no face appears twice in the batch (identical pixels)"),
        *per_attribute,
    ]


def validate(result: ReadResult, limits: ContractLimits = ContractLimits()) -> ContractResult:
    from moodloop.core.expectations import run_suite

    frame = batch_frame(result)
    expectations = _expectations(limits, attribute_columns(frame))
    passed, broken, gx_result = run_suite(SUITE_NAME, frame, expectations, index_column="source")
    reasons = dict(zip(frame["source"], frame["reason"], strict=True))
    failures = [
        {
            **{k: v for k, v in failure.items() if k != "index"},
            "examples": [{"source": s, "reason": reasons.get(s) or "duplicate pixels"} for s in failure["index"]],
        }
        for failure in broken
    ]
    counts = Counter(int(label) for label in frame["label"] if 0 <= label < NUM_CLASSES)
    return ContractResult(
        passed=passed,
        failures=failures,
        class_counts={e: counts.get(i, 0) for i, e in enumerate(EMOTIONS)},
        items=len(frame),
        faces=len(result.faces),
        gx_result=gx_result,
    )


def render_report(batch: str, contract: ContractResult, limit: int = 50, partial: bool = False) -> str:
    """REPORT.md: the verdict, the class counts, then each failed rule with its items.
    `partial`: the failed batch's usable faces are curated anyway (asked for by hand)."""
    if contract.passed:
        verdict = "ACCEPTED"
    elif partial:
        verdict = f"CURATED IN PART (its {contract.faces} usable faces, as asked; the items below were left out)"
    else:
        verdict = "QUARANTINED (the whole batch; nothing was curated or deleted)"
    lines = [
        f"# Landing batch `{batch}`: {verdict}",
        "",
        f"{contract.items} items read, {contract.faces} usable faces.",
        "",
        "| emotion | faces |",
        "|---|---|",
        *[f"| {e} | {n} |" for e, n in contract.class_counts.items()],
        "",
    ]
    if contract.failures:
        lines.append("## Rules this batch breaks")
        for failure in contract.failures:
            lines += [
                "",
                f"### {failure['meaning']}",
                # an expectation on the whole batch (row count, distinct values) names no item
                f"`{failure['expectation']}`: {failure['unexpected_count']} items"
                if failure["examples"]
                else f"`{failure['expectation']}`: observed {failure['unexpected_count']}",
            ]
            for example in failure["examples"][:limit]:
                lines.append(f"- `{example['source']}`: {example['reason']}")
            if len(failure["examples"]) > limit:
                lines.append(f"- ... and {len(failure['examples']) - limit} more (see contract.json)")
        lines += [
            "",
            "The whole batch is kept in the archive; fix the items above and curate them again."
            if partial
            else "Fix the items above and drop the corrected batch into the landing zone again.",
        ]
    return "\n".join(lines) + "\n"


def write_report(folder: Path, batch: str, contract: ContractResult, extra: dict[str, Any] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"batch": batch, **contract.summary(), **(extra or {}), "great_expectations": contract.gx_result}
    (folder / "contract.json").write_text(json.dumps(payload, indent=1, default=str))
    (folder / "REPORT.md").write_text(render_report(batch, contract))
