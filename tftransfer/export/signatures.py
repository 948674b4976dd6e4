"""The serving module: signatures on raw inputs and on prepared inputs.

Built on `tf.Module` rather than `keras.Model.export`, whose signatures fall
short for dict inputs and several named outputs (keras-team/keras#20835,
#21258). The module holds the trained Keras model, the preparation function
used in training, and a label table read from the `labels.txt` asset, so the
SavedModel needs neither tftransfer nor Keras to run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from tftransfer.errors import ExportError

RAW_INPUT_NAMES = {"image": "image_bytes", "text": "text"}
# `serving_prepared`'s input where the preparation returns one tensor, not a
# dict (images; text for encoders that take raw strings).
PREPARED_INPUT_NAMES = {"image": "images", "text": "text"}
DEFAULT_SIGNATURE = "serving_default"
PREPARED_SIGNATURE = "serving_prepared"


def preparation(backbone: Any, prepare: Callable | None) -> Callable:
    """Returns `prepare`, or else the training preparation for `backbone`.

    Args:
        backbone: The `Backbone` the model was built on.
        prepare: An explicit preparation function, or `None`.

    Returns:
        `prepare` if given, else `tftransfer.data.prepare_fn(backbone)`.
    """
    if prepare is not None:
        return prepare
    from tftransfer.data import prepare_fn

    return prepare_fn(backbone)


def batched(prepare: Callable) -> Callable:
    """Makes a preparation function map a `[batch]` of raw inputs.

    Training pipelines may prepare one example at a time (decoded images
    differ in size before resizing) or whole batches (tokenizers). A
    function that cannot be traced on a `[batch]` string tensor is mapped
    over the batch one example at a time.

    Args:
        prepare: The preparation function used in training.

    Returns:
        A function from a `[batch]` string tensor to the prepared batch.
    """
    try:
        tf.function(prepare).get_concrete_function(tf.TensorSpec([None], tf.string))
        return prepare
    except (ValueError, TypeError, tf.errors.InvalidArgumentError):
        pass
    example = tf.function(prepare).get_concrete_function(tf.TensorSpec([], tf.string))
    signature = tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype), example.structured_outputs
    )

    def prepare_each(raw: tf.Tensor):
        return tf.map_fn(prepare, raw, fn_output_signature=signature)

    return prepare_each


def describe(functions: Mapping[str, Any]) -> dict:
    """Summarises signatures as `{name: {"inputs": ..., "outputs": ...}}`.

    Each tensor is described as `{"dtype": ..., "shape": [...]}` (`-1` for
    the batch dimension), for the model card.
    """

    def tensor(spec) -> dict:
        return {
            "dtype": spec.dtype.name,
            "shape": [d if d is not None else -1 for d in spec.shape.as_list()],
        }

    return {
        name: {
            "inputs": {
                spec.name: tensor(spec)
                for spec in tf.nest.flatten(fn.structured_input_signature)
            },
            "outputs": {k: tensor(v) for k, v in fn.structured_outputs.items()},
        }
        for name, fn in functions.items()
    }


class ServingModule(tf.Module):
    """A trained classifier with serving signatures on raw and prepared inputs.

    Signatures (all outputs batched):

    - `serving_default`: raw inputs, what a client sends. Images: `image_bytes`,
      a `[batch]` string tensor of encoded JPEG/PNG/GIF/BMP bytes (REST
      clients send `{"b64": ...}`). Text: `text`, a `[batch]` string tensor.
    - `serving_prepared`: the prepared inputs the model takes, for clients
      that preprocess themselves (images: float32 `images`; text: the dict
      of int32 token tensors, or `text` strings for an encoder that takes
      raw text).

    Outputs of both: `probabilities` float32 `[batch, classes]`, `classes`
    string `[batch]` (top-1 label), `top_k_scores` float32 `[batch, k]` and
    `top_k_classes` string `[batch, k]`.

    Args:
        model: A built Keras model from prepared inputs to class
            probabilities `[batch, classes]`.
        prepare: Function from a `[batch]` string tensor of raw inputs to the
            prepared batch (see `prepare_batch()`).
        modality: `"image"` or `"text"`.
        labels_file: Path of a `labels.txt` with one class name per line; it
            is shipped as the SavedModel asset `labels.txt`.
        num_classes: Number of classes (lines in `labels_file`).
        top_k: How many classes `top_k_*` report (at most `num_classes`).

    Example:

    >>> module = ServingModule(model, prepare, "image", "labels.txt", 5, 3)
    >>> tf.saved_model.save(module, path, signatures=module.signatures())
    """

    def __init__(
        self,
        model: keras.Model,
        prepare: Callable,
        modality: str,
        labels_file: str | os.PathLike,
        num_classes: int,
        top_k: int = 5,
    ):
        super().__init__(name="tftransfer_serving")
        # The model is deliberately not an attribute: tracking it would save
        # its optimizer's state, and the weights of a hub layer's SavedModel
        # under two owners. Only what the signatures capture is saved.
        self._predict = lambda prepared: model(prepared, training=False)
        self._prepare = prepare
        self._modality = modality
        self._num_classes = int(num_classes)
        self._top_k = max(1, min(int(top_k), self._num_classes))
        self.labels_asset = tf.saved_model.Asset(str(labels_file))
        self.labels = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                self.labels_asset,
                key_dtype=tf.int64,
                key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
                value_dtype=tf.string,
                value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value="",
        )
        raw_spec = tf.TensorSpec([None], tf.string, name=RAW_INPUT_NAMES[modality])
        self.serving_default = tf.function(self._serve_raw, input_signature=[raw_spec])
        self.serving_prepared = tf.function(
            self._serve_prepared, input_signature=[self._prepared_spec(raw_spec)]
        )
        self.captured_resources = _owners_of_captures(self.signatures().values())

    def _prepared_spec(self, raw_spec: tf.TensorSpec):
        traced = tf.function(self._prepare).get_concrete_function(raw_spec)

        def spec(tensor: tf.Tensor, name: str) -> tf.TensorSpec:
            return tf.TensorSpec([None, *tensor.shape[1:]], tensor.dtype, name=name)

        outputs = traced.structured_outputs
        if isinstance(outputs, dict):
            return {key: spec(value, key) for key, value in outputs.items()}
        return spec(outputs, PREPARED_INPUT_NAMES[self._modality])

    def _serve_raw(self, raw: tf.Tensor) -> dict:
        return self._serve_prepared(self._prepare(raw))

    def _serve_prepared(self, prepared) -> dict:
        probabilities = tf.cast(self._predict(prepared), tf.float32)
        scores, indices = tf.math.top_k(probabilities, k=self._top_k)
        top_k_classes = self.labels.lookup(tf.cast(indices, tf.int64))
        return {
            "probabilities": probabilities,
            "classes": top_k_classes[:, 0],
            "top_k_scores": scores,
            "top_k_classes": top_k_classes,
        }

    def prepared_input_signature(self):
        """The `tf.TensorSpec` (or dict of them) of the prepared inputs."""
        return self.serving_prepared.input_signature[0]

    def signatures(self) -> dict:
        """Returns the concrete functions to save, keyed by signature name."""
        return {
            DEFAULT_SIGNATURE: self.serving_default.get_concrete_function(),
            PREPARED_SIGNATURE: self.serving_prepared.get_concrete_function(),
        }


def _owners_of_captures(functions) -> list:
    """The variables and resources (lookup tables, ...) that functions capture.

    These are exactly what the serving graph needs saved: the model's weights
    (the `tf.Variable` behind each Keras variable) and what the preparation
    uses, such as a vocabulary table held in a tokenizer's closure, which no
    tracked object owns (`tf.saved_model.save` refuses untracked captures).
    Each captured handle records its owner in `_parent_trackable` (the
    attribute TensorFlow itself reads to explain that error).

    Args:
        functions: The concrete functions to be saved.

    Returns:
        The owners, each once, in order of first capture.
    """
    owners = []
    for function in functions:
        for capture, _ in function.graph.captures:
            parent = getattr(capture, "_parent_trackable", None)
            owner = parent() if parent is not None else None
            if owner is not None and all(owner is not known for known in owners):
                owners.append(owner)
    return owners


def write_labels(class_names: Sequence[str], path: str | os.PathLike) -> None:
    """Writes class names one per line, as the `labels.txt` asset.

    Raises:
        ExportError: if a name is empty or holds a line break.
    """
    for name in class_names:
        if not isinstance(name, str) or not name or "\n" in name or "\r" in name:
            raise ExportError(
                "Expected every class name to be a non-empty string without "
                f"line breaks (one per line in labels.txt). Received: {name!r}."
            )
    with open(path, "w", encoding="utf-8") as labels:
        labels.write("".join(f"{name}\n" for name in class_names))
