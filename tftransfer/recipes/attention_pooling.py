"""Learned attention pooling: a sequence's positions weighted by a learned
query, the alternative to a fixed mean, max or first-token pooling.

`AttentionPooling` pools `[batch, length, dim]` into `[batch, dim]`; it
starts as the masked mean, so it is a safe default to train. The recipes
keep a sequence and its mask together as one tensor, the mask as the last
channel (`MaskChannel`): that is what their feature cache holds for
`pooling="attention"`, and what the head's `AttentionPooling` reads.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tftransfer")
class AttentionPooling(keras.layers.Layer):
    """Pools a sequence `[batch, length, dim]` into one vector by learned
    query attention over its positions.

    Each of `num_heads` heads has a learned query `q`; the key of a position
    `x` is a learned projection `k = W x + b` (`key_dim` wide), its score
    `k . q / sqrt(key_dim)`; a softmax over the positions that the mask
    keeps gives the weights, and the output is the weighted sum of the
    positions' values (`x` itself, or a learned projection of it to
    `value_dim`), averaged over the heads. Padded positions get weight 0,
    and there is no position encoding: the output does not depend on the
    order of the positions.

    The queries start at zero, so every score is 0 and the weights are
    uniform: an untrained layer gives the masked mean of the values
    (`FeaturePooling("mean")` where values are not projected), which makes
    it a safe pooling to start training from. A sequence with no position
    kept pools to zeros.

    Args:
        num_heads: number of learned queries (default 1); the heads' pooled
            values are averaged.
        key_dim: width of the keys and queries; `None`: the input's `dim`.
        value_dim: width of the projected values, and so of the output;
            `None` (default): values are the inputs, the output has `dim`
            features.
        mask_channel: whether the input's last channel is the mask (1 for a
            position to attend to, 0 for padding), as `MaskChannel` appends
            it and the recipes cache attention features; `dim` is then the
            input's width minus 1.

    Call arguments:
        inputs: float tensor `[batch, length, dim]` (`[batch, length, dim +
            1]` with `mask_channel`).
        mask: optional `[batch, length]` tensor, nonzero for the positions
            to attend to (BERT's `input_mask`); ignored with `mask_channel`.

    Returns:
        `[batch, value_dim or dim]`.

    Example:

    >>> pooled = AttentionPooling()(sequence_output, mask=input_mask)
    >>> pooled.shape
    TensorShape([2, 768])
    """

    def __init__(
        self,
        num_heads: int = 1,
        key_dim: int | None = None,
        value_dim: int | None = None,
        mask_channel: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.mask_channel = mask_channel
        self.supports_masking = True

    def build(self, input_shape):
        dim = int(input_shape[-1]) - int(self.mask_channel)
        key_dim = self.key_dim or dim
        self.keys = keras.layers.Dense(self.num_heads * key_dim, name="keys")
        self.keys.build((None, None, dim))
        self.query = self.add_weight(
            shape=(self.num_heads, key_dim), initializer="zeros", name="query"
        )
        self.values = None
        if self.value_dim:
            self.values = keras.layers.Dense(self.value_dim, name="values")
            self.values.build((None, None, dim))

    def compute_mask(self, inputs, mask=None):
        return None  # The pooled output has no positions left to mask.

    def call(self, inputs, mask=None):
        if self.mask_channel:
            inputs, mask = inputs[..., :-1], inputs[..., -1]
        if mask is None:
            mask = tf.ones(tf.shape(inputs)[:2], tf.bool)
        keep = tf.cast(mask, tf.float32)[:, None, :] > 0  # [batch, 1, length]
        shape = tf.shape(inputs)
        keys = tf.reshape(self.keys(inputs), [shape[0], shape[1], self.num_heads, -1])
        key_dim = self.query.shape[-1]
        scores = tf.einsum(
            "blhk,hk->bhl",
            tf.cast(keys, tf.float32),
            tf.cast(self.query, tf.float32),
        ) / tf.sqrt(float(key_dim))
        scores = tf.where(keep, scores, tf.float32.min)
        # A sequence with no position kept gets all-zero weights.
        weights = tf.nn.softmax(scores, axis=-1) * tf.cast(keep, tf.float32)
        values = inputs if self.values is None else self.values(inputs)
        pooled = tf.einsum("bhl,bld->bd", weights, tf.cast(values, tf.float32))
        return tf.cast(pooled / self.num_heads, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        dim = int(input_shape[-1]) - int(self.mask_channel)
        return (input_shape[0], self.value_dim or dim)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "key_dim": self.key_dim,
            "value_dim": self.value_dim,
            "mask_channel": self.mask_channel,
        }


@keras.saving.register_keras_serializable(package="tftransfer")
class MaskChannel(keras.layers.Layer):
    """Appends a sequence's mask as its last channel, so that sequence and
    mask travel as one tensor (through the feature cache, into the head's
    `AttentionPooling(mask_channel=True)`).

    An explicit channel, not zeroed padding: a real position whose features
    are all zero stays a real position.

    Call arguments:
        sequence: float tensor `[batch, length, dim]`.
        mask: optional `[batch, length]` tensor, nonzero for real positions
            (BERT's `input_mask`); `None`: every position is real.

    Returns:
        `[batch, length, dim + 1]`, the last channel 1.0 for a real position
        and 0.0 for padding.

    Example:

    >>> MaskChannel()(sequence_output, mask=input_mask).shape
    TensorShape([2, 128, 769])
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def compute_mask(self, inputs, mask=None):
        return None  # The mask is in the output's last channel.

    def call(self, sequence, mask=None):
        if mask is None:
            channel = tf.ones(tf.shape(sequence)[:2], sequence.dtype)
        else:
            channel = tf.cast(tf.cast(mask, tf.float32) > 0, sequence.dtype)
        return tf.concat([sequence, channel[..., None]], axis=-1)

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1] + 1 if input_shape[-1] is not None else None
        return (*input_shape[:-1], channels)
