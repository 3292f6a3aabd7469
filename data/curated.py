"""The curated dataset (the curated-dataset contract): one TFRecord span per accepted landing batch.

<curated>/span-<N>/faces.tfrecord.gz   tf.Example {image: PNG bytes, label: int64, slice: bytes list}
<curated>/span-<N>/manifest.json       source batch, counts, slice counts, content hashes

Every face carries its slices (moodloop/core/slices.py): its image-property buckets, computed here,
and the attributes its landing batch gave it (extra columns; the generator's nuisance draws).

Faces are deduplicated by the SHA-256 of their 48x48 pixels against every earlier span, so a
batch that lands twice, or a face repeated across batches, is curated once. A span is written
to a hidden folder and renamed into place, so ExampleGen never sees a half-written span.
Pure Python (no TensorFlow), so both environments can curate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from data.landing import encode_png
from data.tfrecord import encode_example, write_tfrecord_gz
from moodloop.core import slices
from moodloop.core.contracts import (
    CORRECTIONS_BATCH_PREFIX,
    CURATED_MANIFEST,
    CURATED_SPAN_PREFIX,
    EMOTIONS,
    FEATURE_IMAGE,
    FEATURE_LABEL,
    FEATURE_SLICES,
    LABELLED_BATCH_PREFIX,
    SOURCE_BATCH,
    SOURCE_CORRECTIONS,
    SOURCE_LABELLED,
    SOURCE_SYNTHETIC,
)
from moodloop.core.files import publish_dir
from moodloop.core.image_properties import property_buckets

_SPAN_DIR = re.compile(re.escape(CURATED_SPAN_PREFIX) + r"(\d+)$")


@dataclasses.dataclass(frozen=True)
class SpanWritten:
    span: int | None  # None when every face was a duplicate: no span is written
    path: Path | None
    written: int
    duplicates: int


def face_hash(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


def existing_spans(curated_dir: Path) -> dict[int, Path]:
    if not curated_dir.is_dir():
        return {}
    spans = {}
    for child in curated_dir.iterdir():
        match = _SPAN_DIR.match(child.name)
        if match and child.is_dir():
            spans[int(match.group(1))] = child
    return dict(sorted(spans.items()))


def known_hashes(curated_dir: Path) -> set[str]:
    hashes: set[str] = set()
    for path in existing_spans(curated_dir).values():
        manifest = json.loads((path / CURATED_MANIFEST).read_text())
        hashes.update(manifest["hashes"])
    return hashes


def batch_source(batch: str, synthetic: bool) -> str:
    """Where a landing batch's faces came from (their `source` slice): generated (the batch carries
    SYNTHETIC_MARKER), corrections of served answers (the faces page's batches), live faces labelled
    on the loop's request (the Label tab's batches), or a team's batch."""
    if synthetic:
        return SOURCE_SYNTHETIC
    if batch.startswith(CORRECTIONS_BATCH_PREFIX):
        return SOURCE_CORRECTIONS
    return SOURCE_LABELLED if batch.startswith(LABELLED_BATCH_PREFIX) else SOURCE_BATCH


def face_slices(
    pixels: np.ndarray, attributes: Mapping[str, str] | None = None, source_side: int | None = None
) -> dict[str, str]:
    """A face's slice attributes: its image-property buckets and the attributes it came with."""
    return property_buckets(pixels, source_side) | dict(attributes or {})


def _example(pixels: np.ndarray, label: int, attributes: Mapping[str, str]) -> bytes:
    return encode_example(
        {FEATURE_IMAGE: encode_png(pixels), FEATURE_LABEL: int(label), FEATURE_SLICES: slices.encode(attributes)}
    )


def write_span(
    curated_dir: Path,
    pixels: Sequence[np.ndarray],
    labels: Sequence[int],
    source: str,
    extra: dict[str, object] | None = None,
    attributes: Sequence[Mapping[str, str]] | None = None,
) -> SpanWritten:
    """Append the new faces of a batch as the next span. Duplicates are counted, not written.
    `attributes`: each face's slice attributes (face_slices); by default its image properties."""
    curated_dir.mkdir(parents=True, exist_ok=True)
    seen = known_hashes(curated_dir)
    keep: list[int] = []
    hashes: list[str] = []
    for i, face in enumerate(pixels):
        digest = face_hash(face)
        if digest not in seen:
            seen.add(digest)
            keep.append(i)
            hashes.append(digest)
    duplicates = len(pixels) - len(keep)
    if not keep:
        return SpanWritten(None, None, 0, duplicates)

    spans = existing_spans(curated_dir)
    span = (max(spans) + 1) if spans else 1
    final = curated_dir / f"{CURATED_SPAN_PREFIX}{span:05d}"
    kept_slices = [attributes[i] if attributes is not None else face_slices(pixels[i]) for i in keep]
    with publish_dir(final) as staging:
        write_tfrecord_gz(
            staging / "faces.tfrecord.gz",
            (_example(pixels[i], labels[i], face) for i, face in zip(keep, kept_slices, strict=True)),
        )
        slice_counts = Counter(pair for face in kept_slices for pair in face.items())
        kept_labels = np.array([labels[i] for i in keep])
        # Labels outside 0..6 are counted apart; ExampleValidator stops such a span by the schema.
        counts = np.bincount(kept_labels[(kept_labels >= 0) & (kept_labels < len(EMOTIONS))], minlength=len(EMOTIONS))
        manifest = {
            "span": span,
            "source": source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "written": len(keep),
            "duplicates_skipped": duplicates,
            "class_counts": dict(zip(EMOTIONS, map(int, counts), strict=True)),
            "out_of_range_labels": int(len(kept_labels) - counts.sum()),
            "slice_counts": {
                key: {value: n for (k, value), n in sorted(slice_counts.items()) if k == key}
                for key in sorted({key for key, _ in slice_counts})
            },
            **(extra or {}),
            "hashes": hashes,
        }
        (staging / CURATED_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return SpanWritten(span, final, len(keep), duplicates)
