"""`from_tfrecord`: examples already stored as `tf.train.Example` records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from tftransfer.data.labeled_data import LabeledData
from tftransfer.data.labels import encode_labels
from tftransfer.errors import DataError, DataNotFoundError


def from_tfrecord(
    file_pattern: str | Sequence[str],
    features: Mapping[str, tf.io.FixedLenFeature] | None = None,
    *,
    input_key: str = "image",
    label_key: str = "label",
    modality: str = "image",
    class_names: Sequence[str] | None = None,
    compression_type: str | None = None,
) -> LabeledData:
    """Reads `tf.train.Example` records from TFRecord files.

    The files are read once when called, to count the examples, check that
    every record parses with `features`, and collect the labels (integer
    class indices, or strings numbered in sorted order unless `class_names`
    gives the order).

    Args:
        file_pattern: A glob pattern or a list of them (local or any file
            system `tf.io.gfile` reads, such as `gs://`).
        features: The feature spec for `tf.io.parse_single_example`; by
            default `{input_key: string, label_key: int64}`, both
            `FixedLenFeature([])`.
        input_key: Feature holding the input: encoded image bytes, pixels
            (`[height, width, channels]` in `[0, 255]`), or text.
        label_key: Feature holding the label (int64 or string).
        modality: `"image"` or `"text"`.
        class_names: Optional class names, in label order.
        compression_type: `None`, `"GZIP"` or `"ZLIB"`.

    Returns:
        A `LabeledData` of `(input, label)`.

    Raises:
        DataNotFoundError: if no file matches.
        DataError: if `features` lacks `input_key` or `label_key`, a record
            does not parse, or a label is not among `class_names`.

    Example:

    >>> data = tftransfer.data.from_tfrecord("gs://bucket/train-*.tfrecord")
    """
    patterns = [file_pattern] if isinstance(file_pattern, str) else file_pattern
    files = sorted({f for p in patterns for f in tf.io.gfile.glob(p)})
    if not files:
        raise DataNotFoundError(
            f"No TFRecord file matches {file_pattern!r}. Check the path and "
            "the glob pattern."
        )
    if features is None:
        features = {
            input_key: tf.io.FixedLenFeature([], tf.string),
            label_key: tf.io.FixedLenFeature([], tf.int64),
        }
    for key in (input_key, label_key):
        if key not in features:
            raise DataError(
                f"The feature spec has no {key!r}; it has {sorted(features)}. "
                "Pass `input_key` / `label_key` naming features in the spec."
            )
    records = tf.data.TFRecordDataset(files, compression_type=compression_type)
    try:
        batches = records.batch(4096).map(
            lambda r: tf.io.parse_example(r, {label_key: features[label_key]})[
                label_key
            ]
        )
        chunks = list(batches.as_numpy_iterator())
        # Parse one record fully, so a wrong input spec fails here too.
        for record in records.take(1):
            tf.io.parse_single_example(record, features)
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
        raise DataError(
            f"TFRecords {file_pattern!r} do not parse with the feature spec "
            f"{dict(features)}: {e.message.strip()}. Fix the spec (or the "
            "`compression_type`) to match how the records were written."
        ) from e
    if not chunks:
        raise DataError(f"TFRecords {file_pattern!r} hold no records.")
    values = np.concatenate(chunks).tolist()
    if isinstance(values[0], bytes):
        values = [v.decode("utf-8") for v in values]
    labels, names = encode_labels(values, class_names, str(file_pattern))
    table = None
    if features[label_key].dtype == tf.string:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(names), tf.range(len(names), dtype=tf.int64)
            ),
            default_value=-1,
        )

    def parse(record):
        example = tf.io.parse_single_example(record, features)
        label = example[label_key]
        label = table.lookup(label) if table is not None else tf.cast(label, tf.int64)
        return example[input_key], label

    input_dtype = features[input_key].dtype
    input_format = (
        "text"
        if modality == "text"
        else ("encoded_image" if input_dtype == tf.string else "pixels")
    )
    return LabeledData(
        dataset=records.map(parse, num_parallel_calls=tf.data.AUTOTUNE),
        class_names=names,
        num_examples=len(labels),
        modality=modality,
        source=f"TFRecords {file_pattern}",
        input_format=input_format,
    )
