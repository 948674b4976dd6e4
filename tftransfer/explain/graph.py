"""Integrated gradients as TensorFlow graphs, for a served model's `explain`
signature: a whole batch at once, no Python in between.

Unlike `explain()`, which first finds where the output changes along the
path and places its points there, a graph takes `steps` equally spaced
midpoints (the midpoint rule), so it can run as one traced function.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tftransfer.explain.layers import output_hook

# Points of the path per example in a served `explain` signature.
SERVING_STEPS = 32


def _midpoints(steps: int) -> tf.Tensor:
    return (tf.range(steps, dtype=tf.float32) + 0.5) / steps


def _scores(outputs: tf.Tensor, targets: tf.Tensor, steps: int) -> tf.Tensor:
    """The target output of each point (each example's `steps` in a row)."""
    repeated = tf.repeat(targets, steps)
    return tf.gather(tf.cast(outputs, tf.float32), repeated, batch_dims=1)


def _mean_per_example(products: tf.Tensor, steps: int) -> tf.Tensor:
    """The mean over each example's `steps` rows."""
    shape = tf.concat([[-1, steps], tf.shape(products)[1:]], 0)
    return tf.reduce_mean(tf.reshape(products, shape), axis=1)


def image_attributions(
    model: keras.Model,
    images: tf.Tensor,
    targets: tf.Tensor,
    low: float,
    steps: int = SERVING_STEPS,
) -> tf.Tensor:
    """Integrated gradients per pixel of a batch, from black images.

    Args:
        model: From prepared images to outputs.
        images: Prepared images `[batch, height, width, 3]`.
        targets: int `[batch]`, the output explained per image.
        low: The low end of the value range (black).
        steps: Midpoints per image.

    Returns:
        float32 `[batch, height, width]`, summed over the channels.
    """
    difference = images - low
    alphas = _midpoints(steps)[None, :, None, None, None]
    points = low + alphas * difference[:, None]
    points = tf.reshape(points, tf.concat([[-1], tf.shape(images)[1:]], 0))
    with tf.GradientTape() as tape:
        tape.watch(points)
        scores = _scores(model(points, training=False), targets, steps)
    gradients = tf.cast(tape.gradient(scores, points), tf.float32)
    return tf.reduce_sum(_mean_per_example(gradients, steps) * difference, axis=-1)


def token_attributions(
    model: keras.Model,
    embedding: keras.Layer,
    prepared: dict,
    word_mask: tf.Tensor,
    baseline_id: int,
    targets: tf.Tensor,
    steps: int = SERVING_STEPS,
) -> tf.Tensor:
    """Integrated gradients per token of a batch, on the token embeddings.

    The baseline is `integrated_gradients.token_embeddings()`'s: the word
    tokens' embeddings replaced by that of `baseline_id`.

    Args:
        model: From the token tensors to outputs.
        embedding: Its token embedding layer.
        prepared: The token tensors, each `[batch, seq_length]`.
        word_mask: float32 `[batch, seq_length]`, 1 at the tokens of words.
        baseline_id: The padding token.
        targets: int `[batch]`.
        steps: Midpoints per example.

    Returns:
        float32 `[batch, seq_length]`.
    """
    alphas = tf.tile(_midpoints(steps), [tf.shape(word_mask)[0]])[:, None, None]
    mask = tf.repeat(word_mask, steps, axis=0)[..., None]
    baseline = embedding(tf.constant([[baseline_id]]))[0]
    inputs = {key: tf.repeat(value, steps, axis=0) for key, value in prepared.items()}
    seen = []
    with tf.GradientTape() as tape:

        def interpolate(embedded):
            words = tf.cast(mask, embedded.dtype)
            base = embedded * (1 - words) + tf.cast(baseline, embedded.dtype) * words
            points = base + tf.cast(alphas, embedded.dtype) * (embedded - base)
            tape.watch(points)
            seen.append((points, embedded - base))
            return points

        with output_hook(embedding, interpolate):
            scores = _scores(model(inputs, training=False), targets, steps)
    points, difference = seen[-1]
    products = tape.gradient(scores, points) * difference
    return _mean_per_example(tf.reduce_sum(tf.cast(products, tf.float32), -1), steps)


def word_layout(preprocessor, texts: tf.Tensor, seq_length: int):
    """The whitespace words of a batch of texts and the word of each token.

    The graph twin of `text.word_positions()`: each word is tokenized alone
    (BERT tokenizers split on whitespace first), `[CLS]` comes first and
    the pieces are cut to `seq_length - 2`.

    Returns:
        `(words, positions)`: `words` a `tf.RaggedTensor` `[batch, (words)]`
        of strings; `positions` int32 `[batch, seq_length]`, the index of
        each token's word in all of `words.flat_values`, -1 for special
        tokens and padding.
    """
    words = tf.strings.split(texts)
    pieces = preprocessor.tokenize(words.flat_values).merge_dims(1, 2)
    per_word = tf.cast(pieces.row_lengths(), tf.int32)
    word_of_piece = tf.repeat(tf.range(tf.size(per_word)), per_word)
    per_text = tf.math.unsorted_segment_sum(
        per_word, tf.cast(words.value_rowids(), tf.int32), tf.shape(texts)[0]
    )
    kept = tf.RaggedTensor.from_row_lengths(word_of_piece, per_text)[
        :, : seq_length - 2
    ]
    cut = kept.to_tensor(-1, shape=[None, seq_length - 2])
    edge = -tf.ones_like(cut[:, :1])
    return words, tf.concat([edge, cut, edge], axis=1)


def word_sums(words: tf.RaggedTensor, positions: tf.Tensor, values: tf.Tensor):
    """Sums per-token `values` per word (0 for words past the cut).

    Returns:
        float32 `[batch, max words]`, 0 past each text's words too.
    """
    count = tf.shape(words.flat_values)[0]
    valid = positions >= 0
    sums = tf.math.unsorted_segment_sum(
        tf.where(valid, values, 0.0), tf.where(valid, positions, count), count + 1
    )[:count]
    return tf.RaggedTensor.from_row_splits(sums, words.row_splits).to_tensor(0.0)
