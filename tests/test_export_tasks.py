"""Serving outputs of multi-label and regression models: label names above
the threshold, predicted values with their target names."""

import io

import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import signal_images, tiny_recipe
from PIL import Image

import tftransfer
from tftransfer import data
from tftransfer.export import signatures
from tftransfer.recipes import FeatureExtraction


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


@pytest.mark.parametrize(
    ("card", "task"),
    [
        ({}, "classification"),
        ({"settings": {"task": "regression"}}, "regression"),
        ({"metrics": {"task": "multi_label"}}, "multi_label"),
    ],
)
def test_the_task_comes_from_the_settings_or_the_metrics(card, task):
    info = tftransfer.export.ModelCardInfo(**card)
    assert signatures.task_of(info) == task
