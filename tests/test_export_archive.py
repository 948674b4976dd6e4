"""ServingArchive signatures, export()'s grouped options, the TFLite interpreter."""

import inspect
import json
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from export_fixtures import fitted_recipe

import tftransfer
from tftransfer.errors import ExportError
from tftransfer.export import ModelCardInfo, ServingArchive, TFLiteOptions, tflite

CLASSES = ["a", "b", "c"]
SIZE = 4


def prepare(raw):
    image = tf.io.decode_png(raw, channels=3)
    return tf.image.resize(image, (SIZE, SIZE)) / 255.0


@pytest.fixture(scope="module")
def backbone():
    return types.SimpleNamespace(modality="image")


@pytest.fixture(scope="module")
def model():
    inputs = keras.Input((SIZE, SIZE, 3))
    hidden = keras.layers.Flatten()(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(hidden)
    model = keras.Model(inputs, outputs, name="tiny")
    model.compile("sgd", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(rng.random((6, SIZE, SIZE, 3)), np.array([0, 1, 2] * 2), verbose=0)
    return model


@pytest.fixture(scope="module")
def recipe(model, backbone):
    return fitted_recipe(model, backbone, CLASSES, "image_folder:/data/x")


def archive_of(model, backbone, **kwargs):
    return ServingArchive(
        model, backbone=backbone, class_names=CLASSES, prepare=prepare, **kwargs
    )


def uint8_images(count=3):
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, (count, SIZE, SIZE, 3), dtype=np.uint8)


def pngs(images):
    return [tf.io.encode_png(image).numpy() for image in images]


def validation_batches():
    rng = np.random.default_rng(2)
    images = rng.random((8, SIZE, SIZE, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((images, rng.integers(0, 3, 8))).batch(4)


def test_default_signatures_are_added_through_add_signature(model, backbone):
    archive = archive_of(model, backbone)
    assert sorted(archive.signatures()) == ["serving_default", "serving_prepared"]
    spec = tf.TensorSpec([None], tf.string, name="image_bytes")
    with pytest.raises(ExportError, match="already has a signature named 'serving_"):
        archive.add_signature("serving_default", archive.serve, spec)
    assert sorted(archive.signatures()) == ["serving_default", "serving_prepared"]


def test_added_signatures_are_saved_described_and_verified(model, backbone, tmp_path):
    archive = archive_of(model, backbone, top_k=2)
    archive.add_signature(
        "serving_uint8",
        lambda images: archive.serve(tf.cast(images, tf.float32) / 255.0),
        tf.TensorSpec([None, SIZE, SIZE, 3], tf.uint8, name="images"),
    )
    archive.add_signature(
        "scores",
        lambda inputs: {"scores": model(inputs["pixels"], training=False)},
        {"pixels": tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)},
    )
    path = tftransfer.export(archive, tmp_path / "m")

    loaded = tf.saved_model.load(str(path)).signatures
    assert sorted(loaded) == [
        "scores",
        "serving_default",
        "serving_prepared",
        "serving_uint8",
    ]
    assert list(loaded["scores"].structured_input_signature[1]) == ["pixels"]
    images = uint8_images()
    served = loaded["serving_uint8"](images=tf.constant(images))
    prepared = loaded["serving_prepared"](images=tf.constant(images / 255.0, "float32"))
    np.testing.assert_allclose(
        served["probabilities"].numpy(), prepared["probabilities"].numpy(), atol=1e-6
    )
    assert served["top_k_classes"].shape == (3, 2)
    card = json.loads((path / "model_card.json").read_text())
    assert card["signatures"]["serving_uint8"]["inputs"] == {
        "images": {"dtype": "uint8", "shape": [-1, SIZE, SIZE, 3]}
    }
    assert card["signatures"]["scores"]["outputs"] == {
        "scores": {"dtype": "float32", "shape": [-1, 3]}
    }

    report = tftransfer.export.verify(
        path,
        pngs(images),
        model=model,
        prepare=prepare,
        signature_inputs={
            "serving_uint8": {"images": images},
            "scores": {"pixels": (images / 255.0).astype("float32")},
        },
        print_signatures=False,
    )
    assert report.signatures == sorted(loaded)
    assert report.max_abs_difference <= 1e-5
    assert sorted(report.signature_outputs) == [
        "scores",
        "serving_prepared",
        "serving_uint8",
    ]
    uint8_classes = report.signature_outputs["serving_uint8"]["classes"]["values"]
    assert uint8_classes == report.outputs["classes"]["values"]
    assert report.signature_outputs["scores"]["scores"]["shape"] == [3, 3]


def test_verify_refuses_inputs_for_a_signature_that_is_not_there(
    model, backbone, tmp_path
):
    path = tftransfer.export(archive_of(model, backbone), tmp_path / "m")
    with pytest.raises(ExportError, match=r"names signatures \['serving_uint8'\]"):
        tftransfer.export.verify(
            path,
            pngs(uint8_images(1)),
            signature_inputs={"serving_uint8": {"images": uint8_images(1)}},
        )


def test_ops_of_an_added_signature_are_checked_before_writing(
    model, backbone, tmp_path
):
    archive = archive_of(model, backbone)
    archive.add_signature(
        "python",
        lambda x: {"y": tf.py_function(lambda v: v, [x], tf.float32)},
        tf.TensorSpec([2], tf.float32, name="x"),
    )
    with pytest.raises(ExportError, match="EagerPyFunc"):
        tftransfer.export(archive, tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "name, fn, spec, message",
    [
        ("", None, tf.TensorSpec([None]), "non-empty string. Received: name=''"),
        ("x", None, [tf.TensorSpec([None])], "Received: input_spec=\\["),
        ("x", None, {"a": "float32"}, "dict from input name to `tf.TensorSpec`"),
        ("x", lambda x: x * 2, tf.TensorSpec([None]), "return a dict from output"),
    ],
)
def test_add_signature_refusals_name_the_value(
    model, backbone, name, fn, spec, message
):
    archive = archive_of(model, backbone)
    with pytest.raises(ExportError, match=message):
        archive.add_signature(name, fn or archive.serve, spec)


def test_archive_arguments_belong_to_the_archive(model, backbone, tmp_path):
    archive = archive_of(model, backbone)
    with pytest.raises(ExportError, match="class_names, top_k; the archive"):
        tftransfer.export(archive, tmp_path / "m", class_names=CLASSES, top_k=2)
    assert not (tmp_path / "m").exists()


def test_recipe_archive_keeps_the_recipe_card_facts_unless_replaced(recipe, tmp_path):
    archive = ServingArchive(recipe, prepare=prepare)
    path = tftransfer.export(
        archive, tmp_path / "m", card=ModelCardInfo(metrics={"accuracy": 0.9})
    )
    card = json.loads((path / "model_card.json").read_text())
    assert card["metrics"] == {"accuracy": 0.9}
    assert card["recipe_settings"]["epochs"] == 1
    assert card["data_source"] == "image_folder:/data/x"
    assert card["class_names"] == CLASSES


def test_export_options_are_typed_objects_and_there_is_no_format_argument(
    recipe, tmp_path
):
    assert "format" not in inspect.signature(tftransfer.export.export).parameters
    with pytest.raises(ExportError, match="TFLiteOptions"):
        tftransfer.export(recipe, tmp_path / "m", prepare=prepare, tflite="tflite")
    with pytest.raises(ExportError, match="ModelCardInfo"):
        tftransfer.export(recipe, tmp_path / "m", prepare=prepare, card={"a": 1})
    with pytest.raises(ExportError, match="quantization='int4'"):
        TFLiteOptions(validation_batches(), quantization="int4")
    with pytest.raises(ExportError, match="validation_data=None"):
        TFLiteOptions(None)
    assert not (tmp_path / "m").exists()


def test_litert_interpreter_runs_the_tflite_check_when_installed(recipe, tmp_path):
    pytest.importorskip("ai_edge_litert.interpreter")
    assert tflite.interpreter_class().__module__ == "ai_edge_litert.interpreter"
    path = tftransfer.export(
        recipe,
        tmp_path / "m",
        prepare=prepare,
        tflite=TFLiteOptions(validation_batches(), quantization="none"),
    )
    facts = json.loads((path / "model_card.json").read_text())["tflite"]
    assert facts["interpreter"] == "ai_edge_litert.interpreter.Interpreter"
    assert facts["validation_examples"] == 8
    assert facts["max_abs_output_difference"] <= 1e-5
    assert facts["accuracy_change"] == 0.0


# The fallback is the deprecated interpreter, on purpose.
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tensorflow_interpreter_runs_the_tflite_check_without_litert(
    model, monkeypatch
):
    spec = tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="images")
    flatbuffer = tflite.convert(model, spec, "none")
    installed = tflite.compare(
        model, flatbuffer, validation_batches(), "classification", CLASSES
    )
    # An import of ai_edge_litert.interpreter now fails as if not installed.
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    assert tflite.interpreter_class() is tf.lite.Interpreter
    fallback = tflite.compare(
        model, flatbuffer, validation_batches(), "classification", CLASSES
    )
    assert fallback["interpreter"].startswith("tensorflow.")
    assert fallback["validation_examples"] == 8
    assert fallback["max_abs_output_difference"] <= 1e-5
    assert fallback["accuracy_tflite"] == installed["accuracy_tflite"]
