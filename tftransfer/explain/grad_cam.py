"""Grad-CAM (Selvaraju et al., 2017) on the last spatial feature map."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tftransfer.explain.integrated_gradients import target_scores
from tftransfer.explain.layers import output_hook, watched


def grad_cam(
    model: keras.Model, layer: keras.Layer, image: tf.Tensor, target: int
) -> np.ndarray:
    """The Grad-CAM map of output `target`, at the prepared image's size.

    Each channel of `layer`'s feature map is weighted by the mean gradient
    of the target output over its positions; the map is the positive part
    of the weighted sum, resized bilinearly to the image.

    Args:
        model: From prepared images `[batch, height, width, 3]` to outputs.
        layer: The layer whose output is the feature map
            (`layers.last_spatial_layer()`).
        image: One prepared image `[height, width, 3]`.
        target: The output explained.

    Returns:
        float `[height, width]`, non-negative.
    """
    seen = []
    with tf.GradientTape() as tape, output_hook(layer, watched(tape, seen)):
        score = target_scores(model(image[None], training=False), target)
    feature_map = seen[-1]
    gradients = tf.cast(tape.gradient(score, feature_map), tf.float32)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(feature_map, tf.float32), -1))
    resized = tf.image.resize(cam[..., None], image.shape[:2], method="bilinear")
    return resized[0, ..., 0].numpy()
