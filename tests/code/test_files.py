"""moodloop/core/files.py: the one way a folder or a model version appears (issue 29): whole or not at
all, never over another one."""

from __future__ import annotations

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
