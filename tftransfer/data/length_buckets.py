"""Length bucketing: text batches padded only as far as their longest member.

Text preparation pads every example to the backbone's `seq_length`, so a
batch of tweets costs as much as a batch of articles. For a pass over the
data whose outputs are wanted in order (features, predictions),
`sorted_by_length()` sorts the examples of each window of batches by
length, longest first, re-batches them in that order (so each batch holds
examples of about one length) and cuts each batch's token tensors at its
longest member. `in_original_order()` then puts the outputs of the pass
back in the order of the data, one window at a time, so memory stays
bounded by the window.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow as tf

TOKEN_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
"""The token tensors of a prepared text batch (see `prepare_fn`)."""

WINDOW_BATCHES = 16
"""Batches whose examples are sorted together: more groups lengths better,
and holds more outputs until the window is complete."""

LENGTH_MULTIPLE = 8
"""Batches are cut at their longest member rounded up to this multiple, so
accelerators see few distinct shapes."""


def applies_to(element_spec) -> bool:
    """Whether batches with `element_spec` (`(inputs, labels)`) are text
    batches that `sorted_by_length()` takes: a dict of the `TOKEN_KEYS`,
    `[batch, seq_length]` each."""
    inputs = element_spec[0] if isinstance(element_spec, tuple) else None
    return (
        isinstance(inputs, dict)
        and set(inputs) == set(TOKEN_KEYS)
        and all(spec.shape.rank == 2 for spec in inputs.values())
    )


def sorted_by_length(
    batches: tf.data.Dataset,
    batch_size: int,
    window_batches: int = WINDOW_BATCHES,
) -> tf.data.Dataset:
    """Re-batches prepared text batches by length, within windows.

    Args:
        batches: `(inputs, labels)` batches of `batch_size` examples (the
            last may be smaller), `inputs` a dict of the `TOKEN_KEYS`
            padded to `seq_length`; `labels` any nested structure.
        batch_size: the examples in each batch of `batches`.
        window_batches: batches whose examples are sorted together.

    Returns:
        As many batches as `batches` holds, of `(inputs, (labels,
        positions))`: each batch's examples are of similar length (longest
        first within a window), `inputs` cut at the longest member (rounded
        up to `LENGTH_MULTIPLE`, `seq_length` at most), and `positions`
        (int64 `[batch]`) the examples' indices in `batches`, for
        `in_original_order()`.

    Example:

    >>> chunks = sorted_by_length(batches, 32)
    >>> outputs = ((model(x), y) for x, y in chunks)
    >>> for features, labels in in_original_order(outputs, 32 * WINDOW_BATCHES):
    ...     ...
    """
    window = batch_size * window_batches

    def sort_window(positions, example):
        inputs, labels = example
        lengths = tf.reduce_sum(tf.cast(inputs["input_mask"] > 0, tf.int32), axis=1)
        order = tf.argsort(lengths, direction="DESCENDING", stable=True)
        take = lambda t: tf.gather(t, order)  # noqa: E731
        return tf.nest.map_structure(take, (inputs, (labels, positions)))

    def cut(inputs, labels):
        seq_length = tf.shape(inputs["input_mask"])[1]
        longest = tf.reduce_max(
            tf.reduce_sum(tf.cast(inputs["input_mask"] > 0, tf.int32), axis=1)
        )
        multiple = LENGTH_MULTIPLE
        length = tf.minimum(seq_length, (longest + multiple - 1) // multiple * multiple)
        return {key: value[:, :length] for key, value in inputs.items()}, labels

    autotune = tf.data.AUTOTUNE
    chunks = (
        batches.unbatch()
        .enumerate()
        .batch(window)
        .map(sort_window, num_parallel_calls=autotune)
        .unbatch()
        .batch(batch_size)
        .map(cut, num_parallel_calls=autotune)
    )
    count = int(batches.cardinality())
    if count >= 0:
        chunks = chunks.apply(tf.data.experimental.assert_cardinality(count))
    return chunks.prefetch(autotune)


def in_original_order(
    outputs: Iterable, window_examples: int
) -> Iterator[tuple[np.ndarray, object]]:
    """Puts the outputs of a pass over `sorted_by_length()` batches back in
    the data's order.

    Args:
        outputs: `(features, (labels, positions))` numpy batches, in the
            order `sorted_by_length()` gave them (features any nested
            structure of arrays, like labels).
        window_examples: the examples of one window (`batch_size *
            window_batches`).

    Yields:
        `(features, labels)`, one window of examples at a time, in the
        order of the data.
    """
    pending: list = []
    window = None
    for features, (labels, positions) in outputs:
        positions = np.asarray(positions)
        # A batch never spans two windows.
        if pending and positions[0] // window_examples != window:
            yield _ordered(pending)
            pending = []
        window = positions[0] // window_examples
        pending.append((features, labels, positions))
    if pending:
        yield _ordered(pending)


def _ordered(parts: list) -> tuple:
    """The concatenated `(features, labels)` of `parts`, sorted by position."""
    features, labels, positions = zip(*parts, strict=True)
    order = np.argsort(np.concatenate(positions), kind="stable")

    def joined(*arrays):
        return np.concatenate(arrays)[order]

    return (
        tf.nest.map_structure(joined, *features),
        tf.nest.map_structure(joined, *labels),
    )
