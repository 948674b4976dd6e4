"""The pieces a recipe model is made of: feature model, pooling and head.

A recipe model is `head(feature_model(inputs))`: the feature model maps
prepared inputs to the feature vector `[batch, feature_dim]` (the backbone,
an output chosen by key, pooling); the head maps features to class
probabilities. Feature extraction trains the head on cached features and
then joins the two, so predictions on raw inputs equal `head(features)`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tftransfer.errors import ConfigError

POOLING_MODES = ("mean", "max", "first")


@keras.saving.register_keras_serializable(package="tftransfer")
class FeaturePooling(keras.layers.Layer):
    """Pools a sequence output `[batch, length, dim]` into `[batch, dim]`.

    Args:
        mode: `"mean"` (average over the positions the mask keeps), `"max"`
            or `"first"` (the first token, such as `[CLS]`).

    Call arguments:
        sequence: float tensor `[batch, length, dim]`.
        mask: optional `[batch, length]` tensor, 1 for real tokens, 0 for
            padding (BERT's `input_mask`).

    Example:

    >>> pooled = FeaturePooling("mean")(sequence_output, mask=input_mask)
    """

    def __init__(self, mode: str = "mean", **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLING_MODES:
            raise ConfigError(
                f"Expected pooling in {POOLING_MODES}. Received: pooling={mode!r}"
            )
        self.mode = mode
        # It consumes a Keras mask (KerasHub's sequence output carries one);
        # the pooled output has no time axis, so no mask goes on.
        self.supports_masking = True

    def compute_mask(self, inputs, mask=None):
        return None

    def call(self, sequence, mask=None):
        if self.mode == "first":
            return sequence[:, 0]
        if mask is None:
            mask = tf.ones(tf.shape(sequence)[:2], sequence.dtype)
        mask = tf.cast(mask, sequence.dtype)[..., None]
        if self.mode == "max":
            lowest = tf.cast(sequence.dtype.min, sequence.dtype)
            return tf.reduce_max(tf.where(mask > 0, sequence, lowest), axis=1)
        total = tf.reduce_sum(sequence * mask, axis=1)
        return total / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="tftransfer")
class InferenceMode(keras.layers.Layer):
    """Calls a layer with `training=False` always, even while it is trained.

    Keras 3 lets the outer `training` flag override a `training=False`
    given when a functional model was built, so a frozen-statistics
    backbone needs this wrapper: BatchNorm keeps its moving statistics (and
    dropout stays off) while the backbone's weights are fine-tuned.

    Args:
        layer: the wrapped layer.

    Example:

    >>> features = InferenceMode(backbone_layer)(images)
    """

    def __init__(self, layer: keras.Layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer

    def call(self, inputs):
        return self.layer(inputs, training=False)

    def get_config(self):
        return {
            **super().get_config(),
            "layer": keras.saving.serialize_keras_object(self.layer),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)


def model_inputs(element_spec) -> keras.KerasTensor | dict[str, keras.KerasTensor]:
    """Returns `keras.Input`s matching the batched inputs of a dataset.

    Args:
        element_spec: the `inputs` part of a batched dataset's
            `element_spec`: a `tf.TensorSpec` or a dict of them.
    """
    if isinstance(element_spec, dict):
        return {
            name: keras.Input(
                shape=tuple(spec.shape[1:]), dtype=spec.dtype.name, name=name
            )
            for name, spec in element_spec.items()
        }
    return keras.Input(
        shape=tuple(element_spec.shape[1:]), dtype=element_spec.dtype.name
    )


def feature_model(
    backbone_layer: keras.Layer,
    inputs,
    *,
    output_key: str | None = None,
    pooling: str | None = None,
    inference_mode: bool = True,
) -> keras.Model:
    """Builds the model from prepared inputs to the feature vector.

    Args:
        backbone_layer: the layer `Backbone.build()` returned, or any Keras
            layer that maps the inputs to features (a tensor or a dict).
        inputs: `keras.Input`s (see `model_inputs()`).
        output_key: which output to use where the layer returns a dict.
        pooling: how to reduce a `[batch, length, dim]` output (see
            `FeaturePooling`); required for sequence outputs.
        inference_mode: call the backbone in inference mode always
            (`InferenceMode`): BatchNorm statistics (and dropout) stay
            frozen even while fine-tuning. `False` follows the model's
            `training` flag.

    Returns:
        A `keras.Model` named `"features"` returning `[batch, dim]`.
    """
    if inference_mode:
        outputs = InferenceMode(backbone_layer, name="inference_mode")(inputs)
    else:
        outputs = backbone_layer(inputs)
    features = select_features(outputs, inputs, output_key=output_key, pooling=pooling)
    return keras.Model(inputs, features, name="features")


def select_features(
    outputs, inputs, *, output_key: str | None = None, pooling: str | None = None
):
    """Returns the feature vector `[batch, dim]` from a backbone's outputs.

    Works on symbolic and on concrete tensors alike, so the functional
    `feature_model()` and the feature pass of a recipe agree.

    Args:
        outputs: what the backbone layer returned: a tensor or a dict.
        inputs: the backbone's inputs (a dict's `input_mask` masks pooling).
        output_key: which output to use where `outputs` is a dict.
        pooling: how to reduce a `[batch, length, dim]` output (see
            `FeaturePooling`); required for sequence outputs.

    Raises:
        ConfigError: if the output is a dict and `output_key` is not one of
            its keys, a sequence without `pooling`, or of another rank.
    """
    if isinstance(outputs, dict):
        if output_key not in outputs:
            raise ConfigError(
                f"The backbone returns the outputs {sorted(outputs)}; choose one "
                f"with `features=`. Received: features={output_key!r}"
            )
        outputs = outputs[output_key]
    if len(outputs.shape) == 3:
        if pooling is None:
            raise ConfigError(
                f"The backbone output has shape {tuple(outputs.shape)} (a "
                f"sequence); pass pooling= one of {POOLING_MODES}."
            )
        mask = inputs.get("input_mask") if isinstance(inputs, dict) else None
        outputs = FeaturePooling(pooling)(outputs, mask=mask)
    if len(outputs.shape) != 2:
        raise ConfigError(
            "Expected backbone features of shape [batch, dim] (or a sequence "
            f"[batch, length, dim] with pooling). Received: shape={tuple(outputs.shape)}"
        )
    return outputs


def build_head(
    feature_dim: int,
    num_classes: int,
    *,
    hidden_units: tuple[int, ...] = (),
    dropout: float = 0.0,
    weight_decay: float = 0.0,
) -> keras.Sequential:
    """Builds a classification head: linear, or a small MLP with dropout.

    The last layer is float32 whatever the dtype policy, so mixed precision
    keeps probabilities and the loss in full precision.

    Args:
        feature_dim: size of the feature vector.
        num_classes: number of classes.
        hidden_units: sizes of ReLU hidden layers (`()` for a linear head).
        dropout: dropout rate before every dense layer.
        weight_decay: L2 penalty on the dense layers' kernels (added to the
            loss; `0.0`: none).

    Returns:
        A `keras.Sequential` named `"head"` mapping `[batch, feature_dim]`
        to class probabilities `[batch, num_classes]`.

    Example:

    >>> head = build_head(1280, 5, hidden_units=(256,), dropout=0.2)
    """
    if num_classes < 2:
        raise ConfigError(
            f"Expected at least 2 classes. Received: num_classes={num_classes}"
        )
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    layers = [keras.Input((feature_dim,))]
    for units in hidden_units:
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
        layers.append(
            keras.layers.Dense(units, activation="relu", kernel_regularizer=regularizer)
        )
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(
        keras.layers.Dense(
            num_classes,
            dtype="float32",
            name="logits",
            kernel_regularizer=regularizer,
        )
    )
    layers.append(
        keras.layers.Activation("softmax", dtype="float32", name="probabilities")
    )
    return keras.Sequential(layers, name="head")


def sparse_crossentropy(label_smoothing: float = 0.0) -> keras.losses.Loss:
    """Cross-entropy on integer labels, with optional label smoothing.

    Keras' `SparseCategoricalCrossentropy` has no label smoothing; this
    one-hot encodes the labels for `CategoricalCrossentropy` when smoothing.
    """
    if not label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy()
    return SmoothedSparseCrossentropy(label_smoothing)


@keras.saving.register_keras_serializable(package="tftransfer")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy with label smoothing, on integer labels.

    Args:
        label_smoothing: in `[0, 1)`; the weight moved from the true class
            to a uniform distribution over the classes.
    """

    def __init__(
        self,
        label_smoothing: float = 0.1,
        name: str = "smoothed_crossentropy",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(
                f"Expected 0 <= label_smoothing < 1. Received: label_smoothing={label_smoothing}"
            )
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        classes = tf.shape(y_pred)[-1]
        one_hot = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), classes)
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
