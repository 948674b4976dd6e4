"""Integrated gradients (Sundararajan et al., 2017) on pixels and on token
embeddings.

The attribution of input feature i is `(x_i - b_i)` times the mean of the
gradient along the straight path from the baseline `b` to the input `x`.
The mean is taken with the midpoint rule over `steps` intervals placed
where the output changes (`placed_alphas()`, after a forward pass over
`steps / 2 + 1` equally spaced points, the baseline and the input
included), run as batches of at most `batch_size` points. The baseline's
and the input's outputs come with the attributions, so completeness (the
attributions add up to `f(x) - f(b)`) can be checked on every explanation.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tftransfer.explain.layers import output_hook

# Within 1% of f(x) - f(b) on the tests' models.
DEFAULT_STEPS = 32
# Points of the path per forward and backward pass.
DEFAULT_BATCH_SIZE = 32
# The share of the path's intervals spread evenly (`placed_alphas()`).
UNIFORM_SHARE = 0.1


def placed_alphas(scores: np.ndarray, steps: int) -> np.ndarray:
    """`steps + 1` positions on [0, 1], denser where the output changes.

    A tenth of the intervals are spread evenly, the rest in proportion to the cube
    root of how much the output changes between the equally spaced
    positions where `scores` were taken (a quadrature's error is
    smallest with points spaced by the cube root of the integrand's
    curvature), so a sharp rise of a saturating softmax, and its tails, get
    the points they need.

    Args:
        scores: The target output at equally spaced positions, both ends
            included.
        steps: The intervals wanted.

    Returns:
        Increasing positions from 0 to 1.
    """
    intervals = len(scores) - 1
    changes = np.abs(np.diff(scores)) ** (1 / 3)
    mass = np.full(intervals, UNIFORM_SHARE / intervals)
    mass += (1 - UNIFORM_SHARE) * (
        changes / changes.sum() if changes.sum() > 0 else 1.0 / intervals
    )
    cumulative = np.concatenate([[0.0], np.cumsum(mass)])
    cumulative /= cumulative[-1]
    grid = np.linspace(0.0, 1.0, intervals + 1)
    return np.interp(np.linspace(0.0, 1.0, steps + 1), cumulative, grid)


def integrate(
    path: Callable, steps: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Integrated gradients along a path, given how to walk it.

    A forward pass over `steps / 2 + 1` equally spaced positions, both ends
    included, finds where the output changes and gives its values at the
    baseline and the input; the path is then cut into `steps` intervals
    (`placed_alphas()`) and a forward and backward pass over their
    midpoints gives the gradients, averaged with the midpoint rule (which,
    unlike the trapezoidal rule, never takes the gradient at the ends, where
    a ReLU sits on its kink for a black baseline).

    Args:
        path: `path(alphas, tape) -> (scores, points, difference)`: for the
            positions `alphas` `[k]` in [0, 1], runs the model on the path's
            points with `points` (the tensor differentiated against,
            `[k, ...]`) watched on `tape` (unless it is `None`); returns
            the target scores `[k]` and `x - b` (broadcastable to `points`).
        steps: Intervals of the midpoint rule.
        batch_size: Points per pass.

    Returns:
        `(attributions, scores)`: the attributions, shaped as one point,
        and the target scores at the equally spaced positions (`scores[0]`
        is the baseline's, `scores[-1]` the input's).
    """
    even = np.linspace(0.0, 1.0, max(steps // 2, 1) + 1, dtype=np.float32)
    scores = np.concatenate(
        [
            path(tf.constant(even[start : start + batch_size]), None)[0].numpy()
            for start in range(0, len(even), batch_size)
        ]
    )
    edges = placed_alphas(scores, steps)
    midpoints = ((edges[:-1] + edges[1:]) / 2).astype(np.float32)
    weights = np.diff(edges).astype(np.float32)
    total = 0.0
    for start in range(0, steps, batch_size):
        chunk = slice(start, start + batch_size)
        with tf.GradientTape() as tape:
            score, points, difference = path(tf.constant(midpoints[chunk]), tape)
        gradients = tape.gradient(score, points)
        total += tf.tensordot(
            weights[chunk], tf.cast(gradients * difference, tf.float32), axes=1
        )
    return total.numpy(), scores


def pixels(
    model: keras.Model,
    image: tf.Tensor,
    baseline: tf.Tensor,
    target: int,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Integrated gradients of an image model's output `target` per pixel.

    Args:
        model: From prepared images `[batch, height, width, 3]` to outputs.
        image: One prepared image `[height, width, 3]`.
        baseline: The baseline image, same shape.
        target: The output explained.
        steps, batch_size: See `integrate()`.

    Returns:
        `(attributions [height, width], scores)`: summed over the channels.
    """
    difference = image - baseline

    def path(alphas, tape):
        points = baseline + alphas[:, None, None, None] * difference
        if tape is not None:
            tape.watch(points)
        return target_scores(model(points, training=False), target), points, difference

    attributions, scores = integrate(path, steps, batch_size)
    return attributions.sum(axis=-1), scores


def token_embeddings(
    model: keras.Model,
    embedding: keras.Layer,
    prepared: dict,
    word_mask: np.ndarray,
    baseline_id: int,
    target: int,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Integrated gradients of a text model's output per token.

    The baseline is the same token sequence with the embeddings of the word
    tokens (`word_mask`) replaced by that of `baseline_id` (the padding
    token: Captum's BERT reference); special tokens and padding keep
    theirs, so they get no attribution, and position and segment
    embeddings (added after the lookup) are unchanged along the path.

    Args:
        model: From the token tensors to outputs.
        embedding: The model's token embedding layer (`layers.token_embedding`).
        prepared: One example's token tensors, each `[1, seq_length]`.
        word_mask: float `[seq_length]`, 1 at the tokens of words.
        baseline_id: The token whose embedding the words start from.
        target: The output explained.
        steps, batch_size: See `integrate()`.

    Returns:
        `(attributions [seq_length], scores)`: summed over the embedding.
    """
    mask = tf.constant(word_mask, tf.float32)[None, :, None]
    baseline = embedding(tf.constant([[baseline_id]]))[0]

    def path(alphas, tape):
        inputs = {
            key: tf.repeat(value, len(alphas), axis=0)
            for key, value in prepared.items()
        }
        seen = []

        def interpolate(embedded):
            words = tf.cast(mask, embedded.dtype)
            base = embedded * (1 - words) + tf.cast(baseline, embedded.dtype) * words
            points = base + alphas[:, None, None] * (embedded - base)
            if tape is not None:
                tape.watch(points)
            seen.append((points, embedded - base))
            return points

        with output_hook(embedding, interpolate):
            scores = target_scores(model(inputs, training=False), target)
        points, words = seen[-1]
        return scores, points, words[:1]

    attributions, scores = integrate(path, steps, batch_size)
    return attributions.sum(axis=-1), scores


def target_scores(outputs, target: int) -> tf.Tensor:
    """The float32 scores of output `target` of a batch of outputs."""
    return tf.cast(outputs[:, target], tf.float32)
