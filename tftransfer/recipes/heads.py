"""The pieces a recipe model is made of: feature model, pooling and head.

A recipe model is `head(feature_model(inputs))`: the feature model maps
prepared inputs to the feature vector `[batch, feature_dim]` (the backbone,
an output chosen by key, pooling); the head maps features to the task's
outputs (class or label probabilities, or values): `build_head()` the
default one, `custom_head()` one from a user's layer or factory. Feature
extraction trains the head on cached features and then joins the two, so
predictions on raw inputs equal `head(features)`.

With `pooling="attention"` the pooling is learned, so it belongs to the
head: the feature model gives the sequence with its mask as the last
channel (`MaskChannel`, `[batch, length, dim + 1]`) and `attention_head()`
puts `AttentionPooling` in front of the head on the pooled features.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tftransfer.backbones.layer_features import MaskedPooling
from tftransfer.errors import ConfigError
from tftransfer.recipes.attention_pooling import AttentionPooling, MaskChannel
from tftransfer.vocabulary import POOLINGS

# The vocabulary's poolings that reduce a sequence; "pooled" is a model's own.
POOLING_MODES = tuple(mode for mode in POOLINGS if mode != "pooled")
# Those that `FeaturePooling` computes; "attention" is learned, in the head.
FIXED_POOLINGS = tuple(mode for mode in POOLING_MODES if mode != "attention")


@keras.saving.register_keras_serializable(package="tftransfer")
class FeaturePooling(MaskedPooling):
    """Pools a sequence output `[batch, length, dim]` into `[batch, dim]`:
    the recipes' fixed pooling, `MaskedPooling` under the name that saved
    recipe models record.

    Args:
        mode: `"mean"` (average over the positions the mask keeps), `"max"`
            or `"first"` (the first token, such as `[CLS]`); `"attention"`
            is learned, in the head (`attention_head()`).

    Call arguments:
        sequence: float tensor `[batch, length, dim]`.
        mask: optional `[batch, length]` tensor, 1 for real tokens, 0 for
            padding (BERT's `input_mask`).

    Example:

    >>> pooled = FeaturePooling("mean")(sequence_output, mask=input_mask)
    """

    def __init__(self, mode: str = "mean", **kwargs):
        if mode not in FIXED_POOLINGS:
            learned = " (a learned pooling: see AttentionPooling)"
            raise ConfigError(
                f"Expected pooling in {FIXED_POOLINGS}. Received: pooling={mode!r}"
                + (learned if mode == "attention" else "")
            )
        super().__init__(mode, **kwargs)


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
    backbone_name: str = "the backbone",
) -> keras.Model:
    """Builds the model from prepared inputs to the feature vector.

    Args:
        backbone_layer: the layer `Backbone.build()` returned, or any Keras
            layer that maps the inputs to features (a tensor or a dict).
        inputs: `keras.Input`s (see `model_inputs()`).
        output_key: which output to use where the layer returns a dict.
        pooling: how to reduce a `[batch, length, dim]` output (see
            `select_features()`); required for sequence outputs.
        inference_mode: call the backbone in inference mode always
            (`InferenceMode`): BatchNorm statistics (and dropout) stay
            frozen even while fine-tuning. `False` follows the model's
            `training` flag.
        backbone_name: the backbone, as error messages name it.

    Returns:
        A `keras.Model` named `"features"` returning `[batch, dim]`, or for
        `pooling="attention"` the masked sequence `[batch, length, dim + 1]`.
    """
    if inference_mode:
        outputs = InferenceMode(backbone_layer, name="inference_mode")(inputs)
    else:
        outputs = backbone_layer(inputs)
    features = select_features(
        outputs,
        inputs,
        output_key=output_key,
        pooling=pooling,
        backbone_name=backbone_name,
    )
    return keras.Model(inputs, features, name="features")


def select_features(
    outputs,
    inputs,
    *,
    output_key: str | None = None,
    pooling: str | None = None,
    backbone_name: str = "the backbone",
):
    """Returns the features of a backbone's outputs: the feature vector
    `[batch, dim]`, or for `pooling="attention"` the sequence with its mask
    as the last channel, `[batch, length, dim + 1]` (`MaskChannel`), which
    the head pools (`attention_head()`).

    Works on symbolic and on concrete tensors alike, so the functional
    `feature_model()` and the feature pass of a recipe agree.

    Args:
        outputs: what the backbone layer returned: a tensor or a dict.
        inputs: the backbone's inputs (a dict's `input_mask` masks pooling;
            without one, every position is attended to).
        output_key: which output to use where `outputs` is a dict.
        pooling: how to reduce a `[batch, length, dim]` output: one of
            `POOLING_MODES` (`"mean"`, `"max"`, `"first"`: `FeaturePooling`;
            `"attention"`: learned, in the head); required for sequence
            outputs.
        backbone_name: the backbone, as error messages name it.

    Raises:
        ConfigError: if the output is a dict and `output_key` is not one of
            its keys, a sequence without `pooling`, not a sequence for
            `pooling="attention"`, or of another rank.
    """
    if isinstance(outputs, dict):
        if output_key not in outputs:
            raise ConfigError(
                f"The backbone returns the outputs {sorted(outputs)}; choose one "
                f"with `features=`. Received: features={output_key!r}"
            )
        outputs = outputs[output_key]
    if pooling == "attention" and len(outputs.shape) != 3:
        raise ConfigError(
            f"pooling='attention' attends over the positions of a sequence "
            f"[batch, length, dim], but {backbone_name}'s output "
            f"(features={output_key!r}) has shape {tuple(outputs.shape)}. Choose "
            "a sequence output with features= (such as a text encoder's "
            "'sequence_output', or an image backbone's spatial feature map), "
            f"or another pooling ({FIXED_POOLINGS}, or None for a vector output)."
        )
    if len(outputs.shape) == 3:
        if pooling is None:
            raise ConfigError(
                f"The backbone output has shape {tuple(outputs.shape)} (a "
                f"sequence); pass pooling= one of {POOLING_MODES}."
            )
        mask = inputs.get("input_mask") if isinstance(inputs, dict) else None
        if pooling == "attention":
            return MaskChannel(name="mask_channel")(outputs, mask=mask)
        outputs = FeaturePooling(pooling)(outputs, mask=mask)
    if len(outputs.shape) != 2:
        raise ConfigError(
            "Expected backbone features of shape [batch, dim] (or a sequence "
            f"[batch, length, dim] with pooling). Received: shape={tuple(outputs.shape)}"
        )
    return outputs


def attention_head(head: keras.Sequential) -> keras.Sequential:
    """Puts `AttentionPooling` in front of a head on pooled features.

    Args:
        head: a head from `build_head()` or `custom_head()`, mapping
            `[batch, dim]` to the task's outputs.

    Returns:
        A `keras.Sequential` named `"head"` mapping the masked sequence
        `[batch, length, dim + 1]` (`MaskChannel`; any length) through
        `AttentionPooling(mask_channel=True)` (named `"attention_pooling"`)
        and the layers of `head`.

    Example:

    >>> head = attention_head(build_head(768, 5))
    >>> head.input_shape
    (None, None, 769)
    """
    dim = int(head.inputs[0].shape[-1])
    return keras.Sequential(
        [
            keras.Input((None, dim + 1)),
            AttentionPooling(mask_channel=True, name="attention_pooling"),
            *head.layers,
        ],
        name="head",
    )


def build_head(
    feature_dim: int,
    num_outputs: int,
    *,
    hidden_units: tuple[int, ...] = (),
    dropout: float = 0.0,
    weight_decay: float = 0.0,
    task: str = "classification",
) -> keras.Sequential:
    """Builds the default head: linear, or a small MLP with dropout.

    The last layer is float32 whatever the dtype policy, so mixed precision
    keeps the outputs and the loss in full precision.

    Args:
        feature_dim: size of the feature vector.
        num_outputs: number of classes, labels (multi-label) or targets
            (regression).
        hidden_units: sizes of ReLU hidden layers (`()` for a linear head).
        dropout: dropout rate before every dense layer.
        weight_decay: L2 penalty on the dense layers' kernels (added to the
            loss; `0.0`: none).
        task: one of `tftransfer.vocabulary.TASKS`; it sets the output
            activation (softmax, sigmoid or none).

    Returns:
        A `keras.Sequential` named `"head"` mapping `[batch, feature_dim]`
        to `[batch, num_outputs]`: class probabilities, label probabilities
        or predicted values.

    Example:

    >>> head = build_head(1280, 5, hidden_units=(256,), dropout=0.2)
    """
    _check_outputs(num_outputs, task)
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    layers = []
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
            num_outputs,
            dtype="float32",
            name="logits",
            kernel_regularizer=regularizer,
        )
    )
    return _with_activation(layers, feature_dim, task)


def custom_head(head, feature_dim: int, num_outputs: int, *, task: str) -> keras.Model:
    """Builds a head from a user's layer or factory, for one training.

    The layer maps features `[batch, feature_dim]` to `[batch, num_outputs]`
    raw outputs (logits for classification and multi-label, values for
    regression); the task's output activation is added after it, in
    float32. A layer instance is copied from its config, so that every
    candidate of the head search (and the final head) starts from fresh
    weights; a factory is called once per head.

    Args:
        head: a `keras.Layer`, or a callable `(features_spec, num_outputs)
            -> keras.Layer`, `features_spec` being a `tf.TensorSpec`
            `[None, feature_dim]` float32.
        feature_dim: size of the feature vector.
        num_outputs: number of classes, labels or targets.
        task: one of `tftransfer.vocabulary.TASKS`.

    Returns:
        A `keras.Sequential` named `"head"`.

    Raises:
        ConfigError: if the factory returns no Keras layer, the layer cannot
            be rebuilt from its config (export and the head search need
            that), or its output is not `[batch, num_outputs]`.

    Example:

    >>> head = custom_head(keras.layers.Dense(5), 1280, 5, task="classification")
    """
    _check_outputs(num_outputs, task)
    if isinstance(head, keras.Layer):
        layer = serializable_copy(head)
    else:
        spec = tf.TensorSpec((None, feature_dim), tf.float32)
        layer = head(spec, num_outputs)
        if not isinstance(layer, keras.Layer):
            raise ConfigError(
                f"head={head!r} returned {type(layer).__name__}, not a keras.Layer. "
                "A head factory takes (features_spec, num_outputs) and returns "
                "a Keras layer."
            )
        serializable_copy(layer)
    model = _with_activation([layer], feature_dim, task)
    shape = tuple(model.compute_output_shape((None, feature_dim)))
    if shape != (None, num_outputs):
        raise ConfigError(
            f"The head {layer.name!r} maps features [batch, {feature_dim}] to "
            f"{list(shape)}; the task needs [batch, {num_outputs}] (one output "
            "per class, label or target). Give its last layer num_outputs units."
        )
    return model


def serializable_copy(layer: keras.Layer) -> keras.Layer:
    """Returns a new layer rebuilt from `layer`'s Keras config.

    Raises:
        ConfigError: if `layer` cannot be serialised and rebuilt (a custom
            class that is not registered, or whose `get_config()` does not
            hold its constructor arguments).
    """
    try:
        config = keras.saving.serialize_keras_object(layer)
        copy = keras.saving.deserialize_keras_object(config)
    except Exception as error:  # Keras raises many kinds here.
        raise ConfigError(
            f"The head {type(layer).__name__} {layer.name!r} cannot be rebuilt "
            f"from its Keras config ({type(error).__name__}: {error}). A custom "
            "head must be a serialisable Keras layer: decorate its class with "
            "@keras.saving.register_keras_serializable() and return its "
            "constructor arguments from get_config()."
        ) from None
    if not isinstance(copy, keras.Layer):
        raise ConfigError(
            f"The head {layer.name!r} rebuilt from its config as "
            f"{type(copy).__name__}, not a keras.Layer; register its class with "
            "@keras.saving.register_keras_serializable()."
        )
    return copy


def _with_activation(layers: list, feature_dim: int, task: str) -> keras.Sequential:
    from tftransfer.recipes.tasks import get_task

    name = "predictions" if task == "regression" else "probabilities"
    activation = keras.layers.Activation(
        get_task(task).activation, dtype="float32", name=name
    )
    return keras.Sequential(
        [keras.Input((feature_dim,)), *layers, activation], name="head"
    )


def _check_outputs(num_outputs: int, task: str) -> None:
    least = 2 if task == "classification" else 1
    if num_outputs < least:
        raise ConfigError(
            f"Expected at least {least} outputs for task={task!r} (classes, "
            f"labels or targets). Received: num_outputs={num_outputs}"
        )


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
