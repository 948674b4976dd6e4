"""Optional TFLite export, measured against the Keras model on validation data.

The TFLite model runs in the LiteRT interpreter (`ai_edge_litert`, the
successor of the deprecated `tf.lite.Interpreter`) when it is installed, and
in TensorFlow's otherwise.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import (
    convert_variables_to_constants_v2,
)

from tftransfer.errors import ExportError

TFLITE_FILE = "model.tflite"
QUANTIZATIONS = ("dynamic_range", "float16", "none")
# The metric of `tftransfer.recipes.tasks.task_metrics` that the TFLite
# model is judged by, per task (the first of each task's headline).
MAIN_METRICS = {
    "classification": "accuracy",
    "multi_label": "micro_f1",
    "regression": "mae",
}


@dataclasses.dataclass(frozen=True)
class TFLiteOptions:
    """Asks `tftransfer.export()` to also write `model.tflite`, and how.

    The TFLite model takes the prepared inputs of `serving_prepared` (images,
    or a text model's token tensors; the preparation is not part of it). It
    and the Keras model are scored on `validation_data` by the task's main
    metric (classification: accuracy; multi-label: micro F1; regression:
    MAE), and their largest output difference is found; the model card
    records both (see `compare()`).

    Args:
        validation_data: Batched `(prepared inputs, labels)` pairs, the
            labels as the task takes them (class indices, multi-hot vectors
            or target values), as `tftransfer.data.make_pipeline()` gives
            them.
        quantization: `"dynamic_range"` (int8 weights), `"float16"`
            (float16 weights) or `"none"`.

    Raises:
        ExportError: if `validation_data` is missing or `quantization` is not
            one of those.

    Example:

    >>> validation = tftransfer.data.make_pipeline(val, backbone, 32)
    >>> tftransfer.export(recipe, "saved_models/flowers",
    ...                   tflite=tftransfer.export.TFLiteOptions(validation))
    """

    validation_data: tf.data.Dataset
    quantization: str = "dynamic_range"

    def __post_init__(self):
        if self.validation_data is None:
            raise ExportError(
                "TFLiteOptions needs `validation_data` (batched (prepared "
                "inputs, labels) pairs) to measure the TFLite model against the "
                "Keras model. Received: validation_data=None; pass "
                "`tftransfer.data.make_pipeline(validation, backbone, 32)`."
            )
        if self.quantization not in QUANTIZATIONS:
            raise ExportError(
                f"Expected `quantization` in {QUANTIZATIONS}. "
                f"Received: quantization={self.quantization!r}."
            )


def interpreter_class() -> type:
    """The TFLite interpreter to run models with.

    Returns:
        `ai_edge_litert.interpreter.Interpreter` (LiteRT) when the
        `ai-edge-litert` package is installed, else `tf.lite.Interpreter`.
        Both take `model_content=` or `model_path=`.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return tf.lite.Interpreter
    return Interpreter


def convert(model: keras.Model, input_signature, quantization: str) -> bytes:
    """Converts a Keras model on prepared inputs to a TFLite flatbuffer.

    Args:
        model: The Keras model (prepared inputs -> outputs).
        input_signature: The prepared inputs' `tf.TensorSpec` (or dict of
            them), as the `serving_prepared` signature takes them.
        quantization: `"dynamic_range"` (int8 weights), `"float16"` (float16
            weights) or `"none"`.

    Returns:
        The TFLite model: inputs named as in `input_signature`, one output
        (the Keras model's).
    """
    serve = tf.function(
        lambda inputs: model(inputs, training=False), input_signature=[input_signature]
    )
    # Keras 3 variables stay resource variables in a converted concrete
    # function (READ_VARIABLE fails at run time), so freeze them first.
    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    if quantization != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def compare(
    model: keras.Model,
    tflite_model: bytes,
    validation_data: tf.data.Dataset,
    task: str,
    names: Sequence[str],
) -> dict:
    """Scores the Keras and the TFLite model on the same data, by the task's
    main metric.

    The metric (`MAIN_METRICS`: classification, `accuracy`; multi-label,
    `micro_f1`; regression, `mae`) is computed by
    `tftransfer.recipes.tasks.task_metrics`, as the recipe's evaluation is.

    Args:
        model: The Keras model.
        tflite_model: Its conversion by `convert()`.
        validation_data: Batched `(prepared inputs, labels)` pairs, the
            labels as the task takes them (class indices, multi-hot vectors
            or target values).
        task: `"classification"`, `"multi_label"` or `"regression"`.
        names: The class, label or target names, in output order.

    Returns:
        `{"interpreter", "validation_examples", "metric", "<metric>_keras",
        "<metric>_tflite", "<metric>_change", "max_abs_output_difference"}`:
        `metric` names the main metric, `<metric>_change` is TFLite's value
        minus Keras's (for `mae` a positive change is a loss), and
        `max_abs_output_difference` the largest absolute difference of any
        output (probability or predicted value). `interpreter` names the
        interpreter class that ran the TFLite model (see
        `interpreter_class()`).

    Raises:
        ExportError: if `validation_data` is empty.
    """
    from tftransfer.recipes.tasks import task_metrics

    interpreter_type = interpreter_class()
    interpreter = interpreter_type(model_content=tflite_model)
    inputs_by_name = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    (output,) = interpreter.get_output_details()
    keras_outputs, tflite_outputs, labels = [], [], []
    for inputs, batch_labels in validation_data:
        keras_outputs.append(np.asarray(model(inputs, training=False)))
        feed = (
            inputs
            if isinstance(inputs, dict)
            else dict.fromkeys(inputs_by_name, inputs)
        )
        for name, value in feed.items():
            interpreter.resize_tensor_input(inputs_by_name[name], value.shape)
        interpreter.allocate_tensors()
        for name, value in feed.items():
            interpreter.set_tensor(inputs_by_name[name], np.asarray(value))
        interpreter.invoke()
        tflite_outputs.append(interpreter.get_tensor(output["index"]))
        labels.append(np.asarray(batch_labels))
    if not labels:
        raise ExportError(
            "`validation_data` is empty; pass batches of (prepared inputs, "
            "labels) to measure the TFLite model against the Keras model."
        )
    labels = np.concatenate(labels)
    expected = np.concatenate(keras_outputs)
    got = np.concatenate(tflite_outputs)
    metric = MAIN_METRICS[task]
    keras_value = task_metrics(task, labels, expected, list(names))[metric]
    tflite_value = task_metrics(task, labels, got, list(names))[metric]
    return {
        "interpreter": f"{interpreter_type.__module__}.{interpreter_type.__name__}",
        "validation_examples": len(labels),
        "metric": metric,
        f"{metric}_keras": keras_value,
        f"{metric}_tflite": tflite_value,
        f"{metric}_change": tflite_value - keras_value,
        "max_abs_output_difference": float(np.abs(expected - got).max()),
    }


def export_tflite(archive, path: str | os.PathLike, options: TFLiteOptions) -> dict:
    """Writes `model.tflite` and returns its facts for the model card.

    Args:
        archive: The `ServingArchive` exported: its model, prepared input
            spec, task and output names.
        path: Where to write the `.tflite` file.
        options: The quantization and the validation data.

    Returns:
        The file name, quantization, size and `compare()`'s result.
    """
    tflite_model = convert(
        archive.model, archive.prepared_input_spec, options.quantization
    )
    Path(path).write_bytes(tflite_model)
    return {
        "file": Path(path).name,
        "quantization": options.quantization,
        "size_bytes": len(tflite_model),
        **compare(
            archive.model,
            tflite_model,
            options.validation_data,
            archive.task,
            archive.class_names,
        ),
    }
