"""The InfraValidator's server check: a model that loads and answers is servable; one that does
not load, or breaks the contract, is refused with the reason (and then never pushed)."""

from __future__ import annotations

import io
import shutil

import numpy as np
import tensorflow as tf
from PIL import Image

from components.infra_validator import check_in_model_server
from components.model_contract import write_warmup_requests
from components.untrained_model import export_version
from moodloop.core.contracts import FEATURE_IMAGE, FEATURE_LABEL


def _examples(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(np.full((48, 48), i * 20, np.uint8)).save(buffer, "PNG")
        feature = {
            FEATURE_IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[buffer.getvalue()])),
            FEATURE_LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 7])),
        }
        out.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return out


def test_a_contract_model_with_warmup_records_is_servable(tmp_path):
    model_dir = export_version(tmp_path / "models", 1)
    warmup = write_warmup_requests(str(model_dir), "emotion", _examples(4))
    assert warmup.endswith("assets.extra/tf_serving_warmup_requests")
    assert len(list(tf.data.TFRecordDataset(warmup))) == 4  # one request per signature
    assert check_in_model_server(str(model_dir), "emotion", _examples(4)) == []


def test_a_half_written_or_foreign_model_is_refused_with_a_reason(tmp_path):
    model_dir = export_version(tmp_path / "models", 1)
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "saved_model.pb").write_bytes(b"\x08\x01 truncated")
    problems = check_in_model_server(str(broken), "emotion", _examples(2))
    assert problems and "did not load" in problems[0]

    class Foreign(tf.Module):  # loads fine, but does not speak the model contract
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve(self, images):
            return {"scores": tf.zeros([tf.shape(images)[0], 3])}

    foreign = tmp_path / "foreign"
    module = Foreign()
    tf.saved_model.save(module, str(foreign), signatures={"serving_default": module.serve})
    problems = check_in_model_server(str(foreign), "emotion", _examples(2))
    assert any("serving_pixels" in p for p in problems) and any("serving_default" in p for p in problems)
    assert any("serving_explain" in p for p in problems)
