"""The TF Serving op check: allowed-op data, refusals naming the op, override."""

import json
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text as text

import tftransfer
from tftransfer import serving_ops
from tftransfer.errors import ExportError

REPO = Path(__file__).resolve().parents[1]


def ops_of(function, spec):
    return serving_ops.graph_ops([tf.function(function).get_concrete_function(spec)])


def round_robin_trim(sentences):
    tokens = tf.strings.split(sentences)
    return (
        text.RoundRobinTrimmer(max_seq_length=4).trim([tokens, tokens])[0].to_tensor()
    )


def test_allowed_op_data_cites_its_sources():
    data = json.loads(serving_ops._DATA_FILE.read_text())
    assert data["tf_text"]["version"] == "2.12.1"
    assert any("tensorflow/serving" in s for s in data["tf_text"]["version_source"])
    assert "tensorflow-text 2.12.1 wheel" in data["tf_text"]["ops_source"]
    assert "FastBertNormalize" in data["tf_text"]["ops"]
    assert "TFText>RoundRobinTrim" not in data["tf_text"]["ops"]
    assert "pull/4057" in data["known_unsupported"]["TFText>RoundRobinTrim"]


def test_graph_ops_include_ops_of_nested_functions():
    spec = tf.TensorSpec([None], tf.string)
    ops = ops_of(lambda x: tf.map_fn(tf.strings.length, x, tf.int32), spec)
    assert {"StringLength", "TensorListReserve"} <= ops


def test_core_and_tf_text_2_12_ops_pass():
    spec = tf.TensorSpec([None], tf.string)
    ops = ops_of(lambda x: text.WhitespaceTokenizer().tokenize(x).to_tensor(), spec)
    assert "TFText>WhitespaceTokenizeWithOffsetsV2" in ops
    serving_ops.check_serving_ops(ops)
    assert serving_ops.needs_tf_text(ops)


def test_newer_tf_text_op_is_refused_with_its_name_and_the_override():
    ops = ops_of(round_robin_trim, tf.TensorSpec([None], tf.string))
    with pytest.raises(ExportError) as raised:
        serving_ops.check_serving_ops(ops)
    message = str(raised.value)
    assert "TFText>RoundRobinTrim" in message
    assert "TF Text 2.12.1" in message
    assert "allow_ops=" in message
    serving_ops.check_serving_ops(ops, allow_ops=serving_ops.unsupported_ops(ops))


def test_python_function_ops_are_refused():
    ops = ops_of(
        lambda x: tf.py_function(lambda v: v, [x], tf.float32), tf.TensorSpec([2])
    )
    assert "EagerPyFunc" in serving_ops.unsupported_ops(ops)


def test_unknown_custom_op_is_refused():
    reasons = serving_ops.unsupported_ops({"MatMul", "MyCustomOp"})
    assert list(reasons) == ["MyCustomOp"]
    assert "custom op" in reasons["MyCustomOp"]


def test_export_refuses_before_writing_anything(tmp_path):
    inputs = keras.Input((4,), dtype="int32")
    outputs = keras.layers.Dense(2, activation="softmax")(
        keras.layers.Lambda(lambda t: tf.cast(t, "float32"))(inputs)
    )
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(np.zeros((2, 4), "int32"), np.array([0, 1]), verbose=0)
    backbone = types.SimpleNamespace(modality="text")

    def prepare(sentences):
        return tf.cast(tf.strings.length(round_robin_trim(sentences)), tf.int32)

    kwargs = dict(backbone=backbone, class_names=["a", "b"], prepare=prepare)
    with pytest.raises(ExportError, match="RoundRobinTrim"):
        tftransfer.export(model, tmp_path / "m", **kwargs)
    assert not (tmp_path / "m").exists()
    path = tftransfer.export(
        model, tmp_path / "m", allow_ops=["TFText>RoundRobinTrim"], **kwargs
    )
    card = json.loads((path / "model_card.json").read_text())
    assert card["serving_ops"]["allowed_by_override"] == ["TFText>RoundRobinTrim"]


@pytest.mark.slow
def test_wheel_ships_every_data_file_of_the_package(tmp_path):
    # A non-editable install has only what the wheel holds: export reads
    # serving_ops.json, and verify runs _serving_check.py as a script.
    source = tmp_path / "source"
    shutil.copytree(
        REPO / "tftransfer",
        source / "tftransfer",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "-q", "-w", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("tftransfer-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    data_files = {
        path.relative_to(source).as_posix()
        for path in (source / "tftransfer").rglob("*")
        if path.is_file() and path.suffix != ".py"
    }
    assert "tftransfer/serving_ops.json" in data_files
    assert data_files <= shipped
    assert "tftransfer/export/_serving_check.py" in shipped
