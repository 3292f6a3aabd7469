"""moodloop/core/files.py: the one way a folder or a model version appears (issue 29): whole or not at
all, never over another one; a secret is private from its first byte."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from moodloop.core.contracts import READY_MARKER
from moodloop.core.files import publish_dir, publish_version


def test_a_published_folder_appears_whole_with_its_marker_last(tmp_path):
    final = tmp_path / "batch-1"
    with publish_dir(final, ready_marker=READY_MARKER) as staging:
        (staging / "faces.csv").write_text("1,2,3")
        assert not final.exists() and staging.name.startswith(".")  # hidden from pollers meanwhile
        assert not (staging / READY_MARKER).exists()
    assert sorted(p.name for p in final.iterdir()) == [READY_MARKER, "faces.csv"]
    assert [p.name for p in tmp_path.iterdir()] == ["batch-1"]  # no staging left


def test_a_failed_publish_leaves_nothing_and_an_existing_folder_is_replaced_only_when_asked(tmp_path):
    final = tmp_path / "edge"
    with pytest.raises(RuntimeError), publish_dir(final) as staging:
        (staging / "half.tflite").write_bytes(b"x")
        raise RuntimeError("conversion failed")
    assert list(tmp_path.iterdir()) == []
    with publish_dir(final) as staging:
        (staging / "old").write_text("1")
    with pytest.raises(OSError), publish_dir(final) as staging:  # never merged into the old one
        (staging / "new").write_text("2")
    with publish_dir(final, replace=True) as staging:
        (staging / "new").write_text("2")
    assert [p.name for p in final.iterdir()] == ["new"] and [p.name for p in tmp_path.iterdir()] == ["edge"]


def test_versions_published_in_one_second_take_the_next_free_number(tmp_path):
    base = tmp_path / "models"
    base.mkdir()
    versions = []
    for i in range(3):
        staging = base / f".incoming-{i}"
        staging.mkdir()
        (staging / "saved_model.pb").write_text(str(i))
        versions.append(publish_version(staging, base))
    assert len(set(versions)) == 3 and versions == sorted(versions)
    assert [(base / str(v) / "saved_model.pb").read_text() for v in versions] == ["0", "1", "2"]


def test_a_secret_is_private_from_its_first_byte_and_replaces_a_readable_file_whole(tmp_path, monkeypatch):
    from moodloop.core.files import write_private_text

    secret = tmp_path / "stack" / "secrets.json"
    secret.parent.mkdir()
    secret.write_text("old")
    secret.chmod(0o644)
    seen = []
    real_replace = os.replace

    def replace(source, target):  # the moment before the rename: the new bytes' file as it is
        seen.append((stat.S_IMODE(os.stat(source).st_mode), Path(source).read_text(), secret.read_text()))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    write_private_text(secret, '{"postgres_password": "p"}')
    assert seen == [(0o600, '{"postgres_password": "p"}', "old")]  # written aside, private, then renamed
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and secret.read_text() == '{"postgres_password": "p"}'
    assert [p.name for p in secret.parent.iterdir()] == ["secrets.json"]
