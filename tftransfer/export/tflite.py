"""Optional TFLite export, with its validation accuracy change measured.

The accuracy is measured with the LiteRT interpreter (`ai_edge_litert`, the
successor of the deprecated `tf.lite.Interpreter`) when it is installed, and
with TensorFlow's otherwise.
"""

from __future__ import annotations

import dataclasses
import os
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


@dataclasses.dataclass(frozen=True)
class TFLiteOptions:
    """Asks `tftransfer.export()` to also write `model.tflite`, and how.

    The TFLite model takes the prepared inputs of `serving_prepared` (images,
    or a text model's token tensors; the preparation is not part of it). Its
    top-1 accuracy and the Keras model's are measured on `validation_data`
    and recorded in the model card.

    Args:
        validation_data: Batched `(prepared inputs, integer label)` pairs,
            as `tftransfer.data.make_pipeline()` gives them.
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
                "inputs, label) pairs) to measure the TFLite model's accuracy "
                "change. Received: validation_data=None; pass "
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
        model: The Keras model (prepared inputs -> probabilities).
        input_signature: The prepared inputs' `tf.TensorSpec` (or dict of
            them), as the `serving_prepared` signature takes them.
        quantization: `"dynamic_range"` (int8 weights), `"float16"` (float16
            weights) or `"none"`.

    Returns:
        The TFLite model: inputs named as in `input_signature`, one output
        (the probabilities).
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


def accuracy_change(
    model: keras.Model, tflite_model: bytes, validation_data: tf.data.Dataset
) -> dict:
    """Measures top-1 accuracy of the Keras and the TFLite model on the same data.

    Args:
        model: The Keras model.
        tflite_model: Its conversion by `convert()`.
        validation_data: Batched `(prepared inputs, integer label)` pairs.

    Returns:
        `{"interpreter", "validation_examples", "accuracy_keras",
        "accuracy_tflite", "accuracy_change",
        "max_abs_probability_difference"}`; `interpreter` names the
        interpreter class that ran the TFLite model (see
        `interpreter_class()`).
    """
    interpreter_type = interpreter_class()
    interpreter = interpreter_type(model_content=tflite_model)
    inputs_by_name = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    (output,) = interpreter.get_output_details()
    total = keras_hits = tflite_hits = 0
    max_difference = 0.0
    for inputs, labels in validation_data:
        expected = np.asarray(model(inputs, training=False))
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
        got = interpreter.get_tensor(output["index"])
        labels = np.asarray(labels).reshape(-1)
        total += labels.size
        keras_hits += int((expected.argmax(-1) == labels).sum())
        tflite_hits += int((got.argmax(-1) == labels).sum())
        max_difference = max(max_difference, float(np.abs(expected - got).max()))
    if total == 0:
        raise ExportError(
            "`validation_data` is empty; pass batches of (prepared inputs, "
            "label) to measure the TFLite model's accuracy."
        )
    return {
        "interpreter": f"{interpreter_type.__module__}.{interpreter_type.__name__}",
        "validation_examples": total,
        "accuracy_keras": keras_hits / total,
        "accuracy_tflite": tflite_hits / total,
        "accuracy_change": (tflite_hits - keras_hits) / total,
        "max_abs_probability_difference": max_difference,
    }


def export_tflite(
    model: keras.Model,
    input_signature,
    path: str | os.PathLike,
    options: TFLiteOptions,
) -> dict:
    """Writes `model.tflite` and returns its facts for the model card.

    Args:
        model: The Keras model.
        input_signature: The prepared inputs' spec (see `convert()`).
        path: Where to write the `.tflite` file.
        options: The quantization and the validation data.

    Returns:
        The file name, quantization, size and `accuracy_change()`'s result.
    """
    tflite_model = convert(model, input_signature, options.quantization)
    Path(path).write_bytes(tflite_model)
    return {
        "file": Path(path).name,
        "quantization": options.quantization,
        "size_bytes": len(tflite_model),
        **accuracy_change(model, tflite_model, options.validation_data),
    }
