"""`from_tfds`: datasets from the TensorFlow Datasets catalogue."""

from __future__ import annotations

import difflib
import os
import socket
import urllib.parse

import tensorflow as tf

from tftransfer.data.labeled_data import LabeledData
from tftransfer.errors import DataError, DataNotFoundError

_PROBE_HOST = ("storage.googleapis.com", 443)


def _network_reachable(timeout: float = 3.0) -> bool:
    """Whether a download could start: a quick connection to GCS or the proxy.

    TFDS retries failed downloads for minutes; checking first means an
    offline machine gets an error at once instead.
    """
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    host, port = _PROBE_HOST
    if proxy:
        parsed = urllib.parse.urlsplit(proxy)
        host, port = parsed.hostname, parsed.port or 80
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _builder(tfds, name: str, data_dir: str | None, try_gcs: bool):
    try:
        return tfds.builder(name, data_dir=data_dir, try_gcs=try_gcs)
    except tfds.core.registered.DatasetNotFoundError as e:
        base = name.split(":")[0].split("/")[0]
        close = difflib.get_close_matches(
            base, tfds.list_builders(with_community_datasets=False), n=5
        )
        hint = f"Did you mean {close}?" if close else "See tfds.list_builders()."
        raise DataError(f"Unknown TFDS dataset {name!r}. {hint}") from e


def _not_prepared(name: str, builder, reason: str) -> DataNotFoundError:
    return DataNotFoundError(
        f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and "
        f"{reason}. On a machine with internet run "
        f"`tfds build {name} --data_dir=<dir>` (or "
        f"`tfds.builder({name!r}).download_and_prepare()`), then copy "
        f"<dir>/{builder.info.full_name} to {builder.data_dir}, or pass the "
        "`data_dir` that holds it. On Cloud TPUs, `try_gcs=True` reads the "
        "public copy in gs://tfds-data."
    )


def _keys(name: str, builder, input_key, label_key) -> tuple[str, str]:
    supervised = builder.info.supervised_keys
    if input_key is None or label_key is None:
        if not (isinstance(supervised, tuple) and len(supervised) == 2):
            raise DataError(
                f"TFDS dataset {name!r} does not say which features are the "
                f"input and the label; pass `input_key` and `label_key` (its "
                f"features are {sorted(builder.info.features)})."
            )
        input_key = input_key or supervised[0]
        label_key = label_key or supervised[1]
    for key in (input_key, label_key):
        if key not in builder.info.features:
            raise DataError(
                f"TFDS dataset {name!r} has no feature {key!r}; its features "
                f"are {sorted(builder.info.features)}."
            )
    return input_key, label_key


def from_tfds(
    name: str,
    split: str = "train",
    *,
    data_dir: str | None = None,
    try_gcs: bool = False,
    download: bool = True,
    input_key: str | None = None,
    label_key: str | None = None,
) -> LabeledData:
    """Reads an image or text classification dataset from TFDS.

    Images stay encoded (decoding happens in the pipeline, in parallel);
    class names come from the label's `ClassLabel` feature.

    Args:
        name: TFDS name, optionally with config and version
            (`"tf_flowers"`, `"imdb_reviews/plain_text:1.0.0"`).
        split: TFDS split syntax: `"train"`, `"train[:80%]"`,
            `"train[80%:]+test"`, ...
        data_dir: Where prepared datasets live (TFDS's default if `None`).
        try_gcs: Read the public prepared copy in `gs://tfds-data` when it
            exists; what Cloud TPUs, which cannot read local files, need.
        download: Download and prepare the dataset when it is not prepared.
            On a machine without network this fails at once (it does not
            wait on retries).
        input_key: Feature holding the input; defaults to the dataset's
            supervised keys.
        label_key: Feature holding the label; defaults likewise.

    Returns:
        A `LabeledData` of `(encoded image bytes or raw string, label)`.

    Raises:
        DataError: for an unknown dataset name (close names are suggested),
            an unknown split, or an input or label feature of the wrong type.
        DataNotFoundError: if the dataset is not prepared and cannot be
            downloaded; the message says where the files must go.

    Example:

    >>> train = tftransfer.data.from_tfds("tf_flowers", split="train[:80%]")
    >>> train.class_names[:2]
    ['dandelion', 'daisy']
    """
    import tensorflow_datasets as tfds

    builder = _builder(tfds, name, data_dir, try_gcs)
    input_key, label_key = _keys(name, builder, input_key, label_key)
    features = builder.info.features
    label_feature, input_feature = features[label_key], features[input_key]
    if not isinstance(label_feature, tfds.features.ClassLabel):
        raise DataError(
            f"Feature {label_key!r} of TFDS dataset {name!r} is a "
            f"{type(label_feature).__name__}, not a ClassLabel; pass the "
            "`label_key` of a class label."
        )
    if isinstance(input_feature, tfds.features.Image):
        modality, input_format = "image", "encoded_image"
        decoders = {input_key: tfds.decode.SkipDecoding()}
    elif isinstance(input_feature, tfds.features.Text):
        modality, input_format, decoders = "text", "text", None
    else:
        raise DataError(
            f"Feature {input_key!r} of TFDS dataset {name!r} is a "
            f"{type(input_feature).__name__}; tftransfer reads Image and Text "
            "inputs. Pass the `input_key` of one."
        )
    if download and not builder.is_prepared():
        if not _network_reachable():
            raise _not_prepared(name, builder, "this machine cannot download it")
        builder.download_and_prepare()
    try:
        dataset = builder.as_dataset(
            split=split, decoders=decoders, shuffle_files=False
        )
    except AssertionError as e:  # TFDS's way of saying "not generated".
        raise _not_prepared(name, builder, "`download=False`") from e
    except ValueError as e:
        raise DataError(
            f"TFDS dataset {name!r} cannot read split {split!r} ({e}). Its "
            f"splits are {sorted(builder.info.splits) or 'listed on its page'}."
        ) from e
    try:
        num_examples = builder.info.splits[split].num_examples
    except (KeyError, ValueError):
        num_examples = None
    dataset = dataset.map(
        lambda example: (example[input_key], tf.cast(example[label_key], tf.int64)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return LabeledData(
        dataset=dataset,
        class_names=list(label_feature.names),
        num_examples=num_examples,
        modality=modality,
        source=f"TFDS {builder.info.full_name} split {split!r}",
        input_format=input_format,
    )
