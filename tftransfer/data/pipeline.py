"""`make_pipeline`: batches prepared for a backbone, ready for `fit()`."""

from __future__ import annotations

import tensorflow as tf

from tftransfer.data.augment import augmenter
from tftransfer.data.labeled_data import LabeledData
from tftransfer.data.prepare import prepare_fn
from tftransfer.errors import DataError

DEFAULT_CACHE_BYTES = 1 << 30
_TEXT_BYTES_GUESS = 1024


def _cached_bytes(data: LabeledData, backbone) -> int | None:
    """Rough memory that caching `data` takes, or `None` if unknown."""
    if data.num_examples is None:
        return None
    if data.modality == "text":
        return data.num_examples * _TEXT_BYTES_GUESS
    height, width = backbone.image_size
    return data.num_examples * height * width * 3 * 4


def make_pipeline(
    data: LabeledData,
    backbone,
    batch_size: int,
    training: bool = False,
    augment=None,
    *,
    resize_mode: str = "center_crop",
    replicas: int = 1,
    cache: bool | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    shuffle_buffer: int | None = None,
    drop_remainder: bool | None = None,
    seed: int | None = None,
) -> tf.data.Dataset:
    """Builds the input pipeline of batched `(prepared input, label)`.

    Images are read and decoded in parallel (`AUTOTUNE`), resized and
    converted to the backbone's value range with `prepare_fn()`, optionally
    cached in memory, shuffled (training), batched, augmented (training) and
    prefetched. Text is cached and shuffled as raw strings, batched, then
    tokenized with the backbone's preprocessor in the pipeline.

    The result can go straight to `model.fit()` inside a `tf.distribute`
    strategy scope, or through `strategy.experimental_distribute_dataset()`:
    it is batched with the global batch size (`batch_size * replicas`) and
    sharded by data, so every worker and replica sees different examples.

    Args:
        data: What a reader (or `split()`) returned.
        backbone: The `tftransfer.Backbone` to prepare inputs for.
        batch_size: Batch size per replica.
        training: Shuffle, and apply `augment`; also drops the last partial
            batch by default, so every step has the same shape (TPUs need it).
        augment: Images, training only: augmentation names or settings, see
            `augmenter()`.
        resize_mode: `"center_crop"` or `"stretch"`, see `prepare_fn()`.
        replicas: Number of replicas in sync
            (`strategy.num_replicas_in_sync`); the global batch is
            `batch_size * replicas`.
        cache: Keep prepared examples in memory after the first epoch.
            `None` caches when the estimated size is at most `cache_bytes`.
        cache_bytes: The memory budget for `cache=None`.
        shuffle_buffer: Shuffle buffer size (capped at the number of
            examples). `None`: 10,000 file paths or texts, or 1,000 encoded
            images or pixel arrays (which take far more memory each).
        drop_remainder: Drop the last partial batch; defaults to `training`.
        seed: Seed of shuffling and augmentation; also makes parallel steps
            keep their order, so a run is reproducible.

    Returns:
        A `tf.data.Dataset` of `(prepared inputs, int64 labels)` batches.

    Raises:
        DataError: if the data's modality does not match the backbone, or
            `augment` is asked for text or for a non-training pipeline.

    Example:

    >>> train = make_pipeline(train_data, backbone, 32, training=True,
    ...                       augment=["flip", "rotation"])
    >>> model.fit(train, validation_data=make_pipeline(val_data, backbone, 32))
    """
    if data.modality != backbone.modality:
        raise DataError(
            f"{data.source} holds {data.modality} data but backbone "
            f"{backbone.name!r} takes {backbone.modality}; pick a matching "
            "backbone."
        )
    if augment and (data.modality != "image" or not training):
        raise DataError(
            "Augmentation applies to images in training pipelines only. "
            f"Received: augment={augment!r} with modality={data.modality!r}, "
            f"training={training}."
        )
    global_batch = int(batch_size) * int(replicas)
    if global_batch < 1:
        raise DataError(
            f"Expected a positive batch size. Received: batch_size={batch_size}, "
            f"replicas={replicas}."
        )
    if cache is None:
        size = _cached_bytes(data, backbone)
        cache = size is not None and size <= cache_bytes
    if drop_remainder is None:
        drop_remainder = training
    if shuffle_buffer is None:
        small = data.input_format in ("file_path", "text")
        shuffle_buffer = 10_000 if small else 1_000
    buffer = min(shuffle_buffer, data.num_examples or shuffle_buffer)
    prepare = prepare_fn(backbone, resize_mode=resize_mode)
    autotune = tf.data.AUTOTUNE
    # Only this pipeline's own maps may reorder (training without a seed):
    # a global `Options.deterministic = False` would also reorder the
    # reader's steps upstream, and `split()` picks examples by position.
    in_order = not training or seed is not None

    def prepare_example(x, y):
        if data.input_format == "file_path":
            x = tf.io.read_file(x)
        return prepare(x), y

    ds = data.dataset
    if data.modality == "image":
        if training and not cache:
            ds = ds.shuffle(buffer, seed=seed)
        ds = ds.map(
            prepare_example, num_parallel_calls=autotune, deterministic=in_order
        )
    if cache:
        ds = ds.cache()
    if training and (cache or data.modality == "text"):
        ds = ds.shuffle(buffer, seed=seed)
    ds = ds.batch(global_batch, drop_remainder=drop_remainder)
    if data.modality == "text":
        ds = ds.map(
            prepare_example, num_parallel_calls=autotune, deterministic=in_order
        )
    if augment:
        layers = augmenter(augment, backbone.value_range, seed=seed)
        ds = ds.map(
            lambda x, y: (layers(x, training=True), y),
            num_parallel_calls=autotune,
            deterministic=in_order,
        )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return ds.prefetch(autotune).with_options(options)
