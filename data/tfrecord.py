"""TFRecord files of tf.Example, written without TensorFlow.

The ingest DAG runs in the orchestration env (Airflow 3), where TensorFlow cannot be installed
next to Airflow; the curated-dataset contract only needs the record framing and two feature
kinds, both small and stable formats:
- TFRecord: uint64 length, masked CRC-32C of the length, data, masked CRC-32C of the data
  (tensorflow/core/lib/io/record_writer.cc); GZIP files are plain gzip streams.
- tf.Example: Example{features=1: Features{feature=1: map<string, Feature>}}, with
  Feature{bytes_list=1: BytesList{value=1}, int64_list=3: Int64List{value=1 (packed)}}.
tests/data/test_curated.py reads these files back with TensorFlow.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import google_crc32c

_MASK_DELTA = 0xA282EAD8


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # int64 negatives are 10-byte two's complement varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_example(features: Mapping[str, bytes | int | list[bytes] | list[int]]) -> bytes:
    """Serialize a tf.Example whose features are bytes or int64 values (one or a list)."""
    entries = b""
    for name, value in features.items():
        values = value if isinstance(value, list) else [value]
        if all(isinstance(v, bytes | bytearray) for v in values):
            feature = _field(1, b"".join(_field(1, bytes(v)) for v in values))
        elif all(isinstance(v, int) for v in values):
            feature = _field(3, _field(1, b"".join(_varint(v) for v in values)))
        else:
            raise TypeError(f"feature {name!r}: values must all be bytes or all be int")
        entries += _field(1, _field(1, name.encode()) + _field(2, feature))
    return _field(1, entries)


def frame(record: bytes) -> bytes:
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", _masked_crc(length)) + record + struct.pack("<I", _masked_crc(record))


def write_tfrecord_gz(path: Path, records: Iterable[bytes]) -> int:
    """Write a GZIP-compressed TFRecord file; returns the number of records."""
    n = 0
    with gzip.open(path, "wb", compresslevel=6) as fh:
        for record in records:
            fh.write(frame(record))
            n += 1
    return n
