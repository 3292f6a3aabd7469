"""Slices: what the bias audit groups faces by (the curated-dataset contract's `slice` feature).

FER2013 has no demographic columns, so moodloop slices by what it knows about a face:
- image-property buckets computed at ingest (moodloop/core/image_properties.py: brightness, contrast,
  sharpness, face_size);
- the synthetic generator's nuisance attributes when the faces are synthetic (skin, pose,
  lighting, occlusion), which it writes as extra columns of its batches;
- any extra column a landing batch carries (a `group` column in labels.csv or fer2013.csv);
- where the face came from, `source=synthetic|batch|corrections` (data/curated.py batch_source),
  so the gate can tell real faces from generated ones.

A face's slices travel as strings "attribute=value" in one multivalent tf.Example feature. Pure
Python: the readers, the curator and the A/B gate share it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from moodloop.core.contracts import SOURCE_ATTRIBUTE
from moodloop.core.image_properties import PROPERTY_ATTRIBUTES

# An attribute with more distinct values than this in one batch is an identifier, not a group:
# one slice per face would tell nothing (the landing contract refuses it).
MAX_VALUES_PER_ATTRIBUTE = 50
MAX_VALUE_LENGTH = 64
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def attribute_name(column: str) -> str:
    """A batch column's name as a slice attribute: lower case, runs of other characters as `_`.
    ValueError for names that cannot be one, or that moodloop computes itself."""
    name = re.sub(r"[^a-z0-9]+", "_", column.strip().lower()).strip("_")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"column {column!r} cannot name a slice: use 1-32 letters, digits or _, starting with a letter"
        )
    if name in PROPERTY_ATTRIBUTES or name == SOURCE_ATTRIBUTE:
        raise ValueError(f"column {column!r} is computed by moodloop itself at ingest; rename the column")
    return name


def attribute_value(text: str) -> str:
    """A cell as a slice value ('' = the face has no value for this attribute)."""
    value = " ".join(text.split())
    if len(value) > MAX_VALUE_LENGTH:
        raise ValueError(f"slice value {value[:20]!r}... is longer than {MAX_VALUE_LENGTH} characters")
    return value


def encode(attributes: Mapping[str, str]) -> list[bytes]:
    """The feature's values, sorted so the same attributes give the same bytes."""
    return [f"{key}={value}".encode() for key, value in sorted(attributes.items()) if value]


def decode(values: Iterable[bytes | str]) -> dict[str, str]:
    pairs = (v.decode() if isinstance(v, bytes) else v for v in values)
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def name(attribute: str, value: str) -> str:
    """How a slice is named in reports: `skin=dark`."""
    return f"{attribute}={value}"
