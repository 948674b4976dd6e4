"""What several benchmarks share: the backbone they time, and how they
run a recipe.

Benchmarks run as scripts (`python benchmarks/NAME.py`), so this folder is on
`sys.path` and they import this module as `common`.
"""

import keras


def random_mobilenet_v3_small(size: int) -> keras.Model:
    """MobileNetV3Small without its top, random weights (timing ignores them).

    Seeded, so every call builds the same network.

    Example:

    >>> random_mobilenet_v3_small(64).output_shape
    (None, 576)
    """
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV3Small(
        input_shape=(size, size, 3),
        include_top=False,
        weights=None,
        pooling="avg",
        include_preprocessing=False,
    )


def timed_recipe_options(work: str, batch_size: int) -> dict:
    """The recipe arguments every benchmark run shares: a fixed number of
    epochs (no early stopping), the cache and run folders in `work`, one
    device, no progress output.

    Example:

    >>> FeatureExtraction(backbone, head_epochs=10,
    ...                   **timed_recipe_options(work, batch_size=64))
    """
    return {
        "patience": None,
        "batch_size": batch_size,
        "cache_dir": f"{work}/cache",
        "run_dir": f"{work}/run",
        "strategy": "default",
        "verbose": 0,
    }


def keras_hub_embedder(preset: str, sequence_length: int, batch_size: int):
    """What a user writes with KerasHub alone to embed texts with a BERT
    preset: `BertTextClassifierPreprocessor` in a `tf.data` map, the
    `BertBackbone` and mean pooling over the padding mask in one
    `tf.function`. Returns `embed(texts) -> float32 [len(texts), dim]`.

    Example:

    >>> embed = keras_hub_embedder(preset, sequence_length=128, batch_size=32)
    >>> embed(["a title", "another"]).shape
    (2, 384)
    """
    import keras_hub
    import numpy as np
    import tensorflow as tf

    tokenizer = keras_hub.models.BertTokenizer.from_preset(preset)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=sequence_length
    )
    encoder = keras_hub.models.BertBackbone.from_preset(preset)

    @tf.function
    def embed_batch(inputs):
        tokens = encoder(inputs)["sequence_output"]
        mask = tf.cast(inputs["padding_mask"], tokens.dtype)[..., None]
        return tf.reduce_sum(tokens * mask, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1.0)

    def embed(texts):
        batches = (
            tf.data.Dataset.from_tensor_slices(texts)
            .batch(batch_size)
            .map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE)
        )
        return np.concatenate([embed_batch(batch).numpy() for batch in batches])

    return embed
