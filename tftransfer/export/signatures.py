"""The default serving signatures: on raw inputs and on prepared inputs.

`add_default_signatures()` adds them to a `ServingArchive` through its
public `add_signature()`, as a user adds their own. Also here: the
preparation the raw signature runs, the outputs of each task
(classification, multi-label, regression), the labels asset and the
signatures' description for the model card.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tensorflow as tf

from tftransfer.errors import ExportError
from tftransfer.vocabulary import TASKS

RAW_INPUT_NAMES = {"image": "image_bytes", "text": "text"}
# `serving_prepared`'s input where the preparation returns one tensor, not a
# dict (images; text for encoders that take raw strings).
PREPARED_INPUT_NAMES = {"image": "images", "text": "text"}
DEFAULT_SIGNATURE = "serving_default"
PREPARED_SIGNATURE = "serving_prepared"
# A multi-label model's label applies where its probability reaches this
# (as in `tftransfer.recipes.metrics.multi_label_metrics`).
MULTI_LABEL_THRESHOLD = 0.5


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


def prepared_spec(prepare: Callable, raw_spec: tf.TensorSpec, modality: str):
    """The spec of the prepared inputs: what `prepare` makes of `raw_spec`.

    Args:
        prepare: The batched preparation (see `batched()`).
        raw_spec: The raw inputs' `tf.TensorSpec` (`[batch]` strings).
        modality: `"image"` or `"text"`; names a single prepared tensor.

    Returns:
        A `tf.TensorSpec` with a free batch dimension, or a dict of them
        (each named by its key) where the preparation returns a dict.
    """
    traced = tf.function(prepare).get_concrete_function(raw_spec)

    def spec(tensor: tf.Tensor, name: str) -> tf.TensorSpec:
        return tf.TensorSpec([None, *tensor.shape[1:]], tensor.dtype, name=name)

    outputs = traced.structured_outputs
    if isinstance(outputs, dict):
        return {key: spec(value, key) for key, value in outputs.items()}
    return spec(outputs, PREPARED_INPUT_NAMES[modality])


def classification_outputs(
    probabilities: tf.Tensor, labels: tf.lookup.StaticHashTable, top_k: int
) -> dict:
    """The outputs of a classifier's default signatures, from the class
    probabilities.

    Args:
        probabilities: float32 `[batch, classes]`.
        labels: Table from class index (int64) to class name.
        top_k: How many classes `top_k_*` report.

    Returns:
        `probabilities`, `classes` (top-1 name, `[batch]`), `top_k_scores`
        float32 `[batch, k]` and `top_k_classes` string `[batch, k]`.
    """
    scores, indices = tf.math.top_k(probabilities, k=top_k)
    top_k_classes = labels.lookup(tf.cast(indices, tf.int64))
    return {
        "probabilities": probabilities,
        "classes": top_k_classes[:, 0],
        "top_k_scores": scores,
        "top_k_classes": top_k_classes,
    }


def multi_label_outputs(
    probabilities: tf.Tensor, label_names: Sequence[str], threshold: float
) -> dict:
    """The outputs of a multi-label model's default signatures.

    Args:
        probabilities: float32 `[batch, labels]`, one sigmoid each.
        label_names: The label names, in output order.
        threshold: A label applies where its probability reaches this.

    Returns:
        `probabilities` and `labels`: string `[batch, labels]`, the names
        of the labels that apply, most probable first, then `""`.
    """
    scores, indices = tf.math.top_k(probabilities, k=len(label_names))
    names = tf.gather(tf.constant(list(label_names)), indices)
    return {
        "probabilities": probabilities,
        "labels": tf.where(scores >= threshold, names, tf.constant("")),
    }


def regression_outputs(predictions: tf.Tensor, target_names: Sequence[str]) -> dict:
    """The outputs of a regression model's default signatures.

    Returns:
        `predictions` float32 `[batch, targets]` and `target_names` string
        `[batch, targets]` (the name of each column).
    """
    names = tf.constant(list(target_names))[None, :]
    return {
        "predictions": predictions,
        "target_names": tf.broadcast_to(names, tf.shape(predictions)),
    }


def task_outputs(
    task: str,
    outputs: tf.Tensor,
    labels: tf.lookup.StaticHashTable,
    class_names: Sequence[str],
    top_k: int,
) -> dict:
    """The named outputs of `task` from a model's outputs `[batch, outputs]`
    (cast to float32): those of `classification_outputs()`,
    `multi_label_outputs()` or `regression_outputs()`.

    Example:

    >>> task_outputs("classification", model(prepared), table, names, top_k=5)
    """
    outputs = tf.cast(outputs, tf.float32)
    if task == "classification":
        return classification_outputs(outputs, labels, top_k)
    if task == "multi_label":
        return multi_label_outputs(outputs, class_names, MULTI_LABEL_THRESHOLD)
    return regression_outputs(outputs, class_names)


def recorded_task(card_info) -> str | None:
    """The task a `ModelCardInfo` records: the `task` of its settings (a
    recipe's), else of its metrics (`tftransfer.recipes.tasks.task_metrics`
    records it), else `None`."""
    settings = dict(card_info.settings or {})
    metrics = dict(card_info.metrics or {})
    return settings.get("task") or metrics.get("task")


def resolve_task(task: str | None, card_info) -> str:
    """The task an archive serves: `task`, else the one `card_info` records,
    else `"classification"`.

    Raises:
        ExportError: if `task` is not one of `TASKS`, or `card_info`
            records another task (the model card and the signatures would
            disagree).
    """
    recorded = recorded_task(card_info)
    task = task or recorded or "classification"
    if task not in TASKS:
        raise ExportError(
            f"Expected task to be one of {TASKS}. Received: task={task!r}."
        )
    if recorded is not None and recorded != task:
        raise ExportError(
            f"The model card records task={recorded!r} (in its settings or "
            f"metrics) but the signatures serve task={task!r}; they must agree. "
            f"Pass task={recorded!r} to serve it, or correct the card."
        )
    return task


def add_default_signatures(archive) -> None:
    """Adds the two default signatures through `archive.add_signature()`.

    - `serving_default`: raw inputs, what a client sends. Images:
      `image_bytes`, a `[batch]` string tensor of encoded JPEG/PNG/GIF/BMP
      bytes (REST clients send `{"b64": ...}`). Text: `text`, a `[batch]`
      string tensor. Prepared inside the graph by `archive.prepare`.
    - `serving_prepared`: the prepared inputs the model takes, for clients
      that preprocess themselves (images: float32 `images`; text: the dict
      of int32 token tensors, or `text` strings for an encoder that takes
      raw text).

    Both return `archive.serve()`'s outputs, those of the archive's task:
    classification, `classification_outputs()`; multi-label,
    `multi_label_outputs()`; regression, `regression_outputs()`.

    Args:
        archive: A `tftransfer.export.ServingArchive`.
    """
    serve = archive.serve
    raw_spec = tf.TensorSpec([None], tf.string, name=RAW_INPUT_NAMES[archive.modality])
    archive.add_signature(
        DEFAULT_SIGNATURE,
        lambda raw: serve(archive.prepare(raw)),
        raw_spec,
    )
    archive.add_signature(PREPARED_SIGNATURE, serve, archive.prepared_input_spec)


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
