"""`from_arrays`: images or texts already in memory as NumPy arrays."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tftransfer.data.labeled_data import LabeledData
from tftransfer.data.labels import (
    default_target_names,
    encode_labels,
    encode_multi_labels,
)
from tftransfer.errors import DataError
from tftransfer.vocabulary import TASKS

# Images checked at a time for NaN and infinity, which bounds the memory the
# check takes beside the array.
_CHECK_CHUNK = 1024


def _check_pixels(images: np.ndarray, value_range: tuple[float, float]) -> None:
    """Raises if float `images` hold NaN or infinity; warns if images in
    `[0, 1]` come with the default `value_range=(0, 255)`."""
    if images.dtype.kind != "f":
        return
    bad_values, bad_images, first = 0, 0, None
    low, high = np.inf, -np.inf
    for start in range(0, len(images), _CHECK_CHUNK):
        chunk = images[start : start + _CHECK_CHUNK]
        per_image = (~np.isfinite(chunk)).reshape(len(chunk), -1).sum(axis=1)
        if per_image.any():
            bad_values += int(per_image.sum())
            bad_images += int(np.count_nonzero(per_image))
            if first is None:
                first = start + int(np.flatnonzero(per_image)[0])
        elif first is None:
            low, high = min(low, chunk.min()), max(high, chunk.max())
    if bad_values:
        raise DataError(
            f"from_arrays() got {bad_values} NaN or infinite pixel values in "
            f"{bad_images} of {len(images)} images (the first at index "
            f"{first}). Replace them (for example with `np.nan_to_num`) or "
            "drop those images."
        )
    if tuple(value_range) == (0, 255) and low >= 0 and 0 < high <= 1:
        warnings.warn(
            f"from_arrays() got float images with values in [{low:g}, "
            f"{high:g}], but value_range=(0, 255) (the default) says they span "
            "[0, 255], so they would be read as nearly black. Pass "
            "value_range=(0, 1).",
            stacklevel=3,
        )


def from_arrays(
    inputs: np.ndarray | Sequence[str],
    labels: np.ndarray | Sequence,
    class_names: Sequence[str] | None = None,
    *,
    value_range: tuple[float, float] = (0, 255),
    task: str = "classification",
) -> LabeledData:
    """Wraps in-memory images or texts and their labels.

    Args:
        inputs: Images as a numeric array `[n, height, width, channels]`
            (1, 3 or 4 channels) or `[n, height, width]` (grayscale), or
            texts as a sequence or array of strings.
        labels: `n` labels. Classification: integer class indices or
            strings (numbered in sorted order unless `class_names` gives the
            order). Multi-label: a multi-hot array `[n, num_labels]` of 0
            and 1, or one collection of label names per example.
            Regression: numbers `[n]` (one target) or `[n, num_targets]`.
        class_names: Optional class names, in label order (multi-label: the
            label names; regression: the target names, by default
            `"target"` or `"target_0"`, `"target_1"`, ...).
        value_range: Images only: `(low, high)` of the pixel values, for
            example `(0, 1)` for floats in `[0, 1]`; they are rescaled to
            `[0, 255]`, which the preparation step expects.
        task: `"classification"`, `"multi_label"` or `"regression"`
            (`tftransfer.vocabulary.TASKS`).

    Returns:
        A `LabeledData` of `(pixels or raw string, label)`.

    Raises:
        DataError: if `inputs` is neither images nor strings, is empty, or
            its length differs from that of `labels`; if float images hold
            NaN or infinite values (the message counts them and names the
            first image); or if a label is not a class (the message names
            it and its index).

    Float images with values in `[0, 1]` and the default `value_range` give
    a `UserWarning`: pass `value_range=(0, 1)`.

    Example:

    >>> (x, y), _ = keras.datasets.cifar10.load_data()
    >>> data = tftransfer.data.from_arrays(x, y[:, 0], class_names=CIFAR10)
    >>> tagged = tftransfer.data.from_arrays(
    ...     texts, [["sport"], ["sport", "tech"]], task="multi_label")
    >>> prices = tftransfer.data.from_arrays(images, values, task="regression")
    """
    array = np.asarray(inputs)
    encoded, names = _encoded_labels(labels, class_names, task)
    if len(array) == 0 or len(array) != len(encoded):
        raise DataError(
            f"Expected as many labels as inputs, and at least one. Received: "
            f"{len(array)} inputs and {len(encoded)} labels."
        )
    if array.dtype.kind in "USO":
        texts = [
            t.decode("utf-8") if isinstance(t, bytes) else str(t)
            for t in array.reshape(-1).tolist()
        ]
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if array.ndim != 1 or empty:
            raise DataError(
                "Expected texts as a 1-D sequence of non-empty strings. "
                f"Received: shape={array.shape}, empty at indices {empty[:10]}."
            )
        dataset = tf.data.Dataset.from_tensor_slices((texts, encoded))
        modality, input_format = "text", "text"
    else:
        if array.ndim == 3:
            array = array[..., np.newaxis]
        if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
            raise DataError(
                "Expected images shaped [n, height, width, channels] with 1, 3 "
                f"or 4 channels, or [n, height, width]. Received: "
                f"shape={np.asarray(inputs).shape}."
            )
        _check_pixels(array, value_range)
        dataset = tf.data.Dataset.from_tensor_slices((array, encoded))
        low, high = value_range
        if (low, high) != (0, 255):
            scale = 255.0 / (high - low)
            dataset = dataset.map(
                lambda x, y: ((tf.cast(x, tf.float32) - low) * scale, y)
            )
        modality, input_format = "image", "pixels"
    return LabeledData(
        dataset=dataset,
        class_names=names,
        num_examples=len(array),
        modality=modality,
        source=f"arrays of {len(array)} {modality}s",
        input_format=input_format,
        task=task,
    )


def _encoded_labels(labels, class_names, task: str) -> tuple[np.ndarray, list[str]]:
    """`labels` as the task stores them, and the class (label, target) names."""
    if task not in TASKS:
        raise DataError(f"Expected task to be one of {TASKS}. Received: task={task!r}.")
    source = "from_arrays()"
    if task == "classification":
        return encode_labels(list(np.asarray(labels).reshape(-1)), class_names, source)
    if task == "multi_label":
        array = np.asarray(labels, dtype=object) if len(labels) else np.zeros((0, 0))
        if array.ndim == 2 and all(
            isinstance(v, (int, float, np.number, np.bool_)) for v in array.flat
        ):
            hot = np.asarray(labels, dtype=np.float32)
            wrong = np.argwhere((hot != 0) & (hot != 1))
            if wrong.size:
                raise DataError(
                    f"{source} got multi-hot labels with values other than 0 and "
                    f"1 (the first at example {int(wrong[0][0])}). Pass 0/1 "
                    "vectors, or one collection of label names per example."
                )
            names = list(class_names or [str(i) for i in range(hot.shape[1])])
            if len(names) != hot.shape[1]:
                raise DataError(
                    f"{source} got multi-hot labels of width {hot.shape[1]} "
                    f"and {len(names)} class_names; give one name per column."
                )
            return hot, names
        return encode_multi_labels(labels, class_names, source)
    targets = np.asarray(labels)
    if targets.dtype.kind not in "iuf" or targets.ndim not in (1, 2):
        raise DataError(
            f"{source} with task='regression' needs numeric targets [n] or "
            f"[n, num_targets]. Received: dtype={targets.dtype}, "
            f"shape={targets.shape}."
        )
    targets = targets.astype(np.float32).reshape(len(targets), -1)
    bad = np.flatnonzero(~np.isfinite(targets).all(axis=1))
    if bad.size:
        raise DataError(
            f"{source} got {bad.size} examples with targets that are NaN or "
            f"infinite (the first at index {int(bad[0])}); drop or fill them."
        )
    width = targets.shape[1]
    names = list(class_names or default_target_names(width))
    if len(names) != width:
        raise DataError(
            f"{source} got {width} targets per example and {len(names)} "
            "class_names; give one name per target."
        )
    return targets, names
