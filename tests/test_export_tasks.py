"""Serving outputs of multi-label and regression models: label names above
the threshold, predicted values with their target names; the task served is
the one the model card records; TFLite is judged by the task's metric."""

import io
import json
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import signal_images, tiny_recipe
from export_fixtures import fitted_recipe
from PIL import Image

import tftransfer
from tftransfer import data
from tftransfer.errors import ExportError
from tftransfer.export import ModelCardInfo, ServingArchive, TFLiteOptions, signatures
from tftransfer.recipes import FeatureExtraction
from tftransfer.recipes.tasks import task_metrics

SIZE = 4
IMAGE = types.SimpleNamespace(modality="image")


def _png(pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _exported(tmp_path, labels, names, task):
    pixels, _ = signal_images(32)
    train = data.from_arrays(pixels, labels, names, task=task)
    recipe = tiny_recipe(FeatureExtraction, tmp_path)
    recipe.fit(train, train)  # No evaluate(): the settings carry the task.
    path = tftransfer.export(recipe, tmp_path / "model")
    examples = [_png(p) for p in pixels[:4]]
    # A fresh TensorFlow-only process serves what the recipe computes.
    report = tftransfer.export.verify(path, examples, model=recipe)
    assert report.max_abs_difference < 1e-4
    served = tf.saved_model.load(str(path)).signatures["serving_default"]
    outputs = served(image_bytes=tf.constant(examples))
    expected = recipe.model.predict(pixels[:4].astype("float32") / 255, verbose=0)
    card = json.loads((path / "model_card.json").read_text())
    assert card["task"] == task
    assert set(card["signatures"]["serving_default"]["outputs"]) == set(outputs)
    return outputs, expected


def test_multi_label_export_serves_probabilities_and_the_labels_that_apply(tmp_path):
    _, signal = signal_images(32)
    labels = np.stack([signal > 0.5, signal < 0.5, signal >= 0], axis=1)
    outputs, expected = _exported(
        tmp_path, labels.astype("float32"), ["bright", "dark", "all"], "multi_label"
    )
    assert set(outputs) == {"probabilities", "labels"}
    probabilities = outputs["probabilities"].numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    for row, names in zip(probabilities, outputs["labels"].numpy(), strict=True):
        order = np.argsort(-row, kind="stable")
        applying = [
            ["bright", "dark", "all"][i]
            for i in order
            if row[i] >= signatures.MULTI_LABEL_THRESHOLD
        ]
        assert [n.decode() for n in names if n] == applying
        assert len(names) == 3


def test_regression_export_serves_values_and_target_names(tmp_path):
    _, signal = signal_images(32)
    targets = np.stack([10 * signal, -signal], axis=1)
    outputs, expected = _exported(tmp_path, targets, ["up", "down"], "regression")
    assert set(outputs) == {"predictions", "target_names"}
    np.testing.assert_allclose(outputs["predictions"].numpy(), expected, atol=1e-4)
    assert outputs["target_names"].numpy().tolist() == [[b"up", b"down"]] * 4


def prepare(raw):
    image = tf.io.decode_png(raw, channels=3)
    return tf.image.resize(image, (SIZE, SIZE)) / 255.0


def dense_model(outputs: int, activation: str) -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 3))
    hidden = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(outputs, activation)(hidden))


def pngs(count: int) -> list:
    pixels = np.random.default_rng(1).integers(0, 255, (count, SIZE, SIZE, 3))
    return [tf.io.encode_png(p.astype("uint8")).numpy() for p in pixels]


@pytest.mark.parametrize(
    ("card", "task"),
    [
        ({}, "classification"),
        ({"settings": {"task": "regression"}}, "regression"),
        ({"metrics": {"task": "multi_label"}}, "multi_label"),
    ],
)
def test_the_task_defaults_to_the_one_the_card_records(card, task):
    info = ModelCardInfo(**card)
    assert signatures.resolve_task(None, info) == task
    assert signatures.resolve_task(task, info) == task


def test_a_keras_model_exported_with_a_task_serves_and_records_it(tmp_path):
    model = dense_model(2, "linear")
    path = tftransfer.export(
        model,
        tmp_path / "prices",
        backbone=IMAGE,
        class_names=["price", "rating"],
        prepare=prepare,
        task="regression",
        card=ModelCardInfo(settings={"task": "regression"}),
    )
    card = json.loads((path / "model_card.json").read_text())
    assert card["task"] == "regression"
    served = tf.saved_model.load(str(path)).signatures["serving_default"]
    outputs = served(image_bytes=tf.constant(pngs(2)))
    assert set(outputs) == {"predictions", "target_names"}
    for name in ("serving_default", "serving_prepared"):
        described = card["signatures"][name]["outputs"]
        assert set(described) == {"predictions", "target_names"}


def test_a_card_that_records_another_task_than_the_one_served_is_refused(tmp_path):
    model = dense_model(2, "linear")
    with pytest.raises(ExportError, match="records task='regression'.*task='class"):
        tftransfer.export(
            model,
            tmp_path / "m",
            backbone=IMAGE,
            class_names=["price", "rating"],
            prepare=prepare,
            card=ModelCardInfo(settings={"task": "regression"}),
        )
    recipe = fitted_recipe(model, IMAGE, ["a", "b"], "x")
    recipe.settings["task"] = "classification"
    with pytest.raises(ExportError, match="Pass task='classification'"):
        ServingArchive(recipe, prepare=prepare, task="regression")
    with pytest.raises(ExportError, match="task='ranking'"):
        ServingArchive(model, backbone=IMAGE, class_names=["a", "b"], task="ranking")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("task", "activation", "labels", "metric"),
    [
        ("multi_label", "sigmoid", [[1, 0, 1], [0, 1, 1]] * 4, "micro_f1"),
        ("regression", "linear", [[0.5, 2.0, -1.0], [1.5, 0.0, 3.0]] * 4, "mae"),
    ],
)
def test_tflite_of_a_multi_label_or_regression_model_records_the_task_metric(
    tmp_path, task, activation, labels, metric
):
    model = dense_model(3, activation)
    images = np.random.default_rng(2).random((8, SIZE, SIZE, 3)).astype("float32")
    labels = np.asarray(labels, "float32")
    validation = tf.data.Dataset.from_tensor_slices((images, labels)).batch(3)
    path = tftransfer.export(
        model,
        tmp_path / "m",
        backbone=IMAGE,
        class_names=["x", "y", "z"],
        prepare=prepare,
        task=task,
        tflite=TFLiteOptions(validation, quantization="none"),
    )
    facts = json.loads((path / "model_card.json").read_text())["tflite"]
    expected = task_metrics(
        task, labels, model.predict(images, verbose=0), ["x", "y", "z"]
    )
    assert facts["metric"] == metric
    assert facts[f"{metric}_keras"] == pytest.approx(expected[metric], abs=1e-6)
    assert facts[f"{metric}_tflite"] == pytest.approx(expected[metric], abs=1e-5)
    assert facts[f"{metric}_change"] == pytest.approx(
        facts[f"{metric}_tflite"] - facts[f"{metric}_keras"]
    )
    assert facts["validation_examples"] == 8
    assert facts["max_abs_output_difference"] <= 1e-5
    assert not any(key.startswith("accuracy") for key in facts)
