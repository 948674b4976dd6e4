"""Reaching inside a Keras model: its leaf layers, the token embedding, the
last spatial feature map, and a hook on one layer's output.

Attribution methods need tensors that the model computes but does not
return: the token embeddings (integrated gradients on text) and the last
spatial feature map (Grad-CAM). `output_hook()` replaces a layer's `call`
for the duration of a forward pass, so the same model (frozen or
fine-tuned, nested in a recipe's functional model or not) is used as it is,
with no copy of its weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import keras
import tensorflow as tf

from tftransfer.errors import ArgumentError


@contextlib.contextmanager
def output_hook(layer: keras.Layer, transform: Callable) -> Iterator[None]:
    """Passes `layer`'s output through `transform` while the block runs.

    Args:
        layer: A layer of the model.
        transform: `transform(output) -> output`, for example one that
            records the output (and watches it on a `tf.GradientTape`) or
            replaces it.

    Example:

    >>> seen = []
    >>> with output_hook(model.get_layer("conv"), lambda t: seen.append(t) or t):
    ...     model(images)
    """
    original = layer.call

    def call(*args, **kwargs):
        return transform(original(*args, **kwargs))

    layer.call = call
    try:
        yield
    finally:
        del layer.call


def leaf_layers(model: keras.Layer) -> list[keras.Layer]:
    """The layers of `model`, nested models opened, that hold no other layer."""
    return [
        layer
        for layer in model._flatten_layers(include_self=True, recursive=True)
        if not list(layer._flatten_layers(include_self=False, recursive=False))
    ]


def token_embedding(model: keras.Layer) -> keras.layers.Embedding | None:
    """The layer that looks up token embeddings in `model`, if Keras sees it.

    A KerasHub text backbone names it `token_embedding`; any other model
    qualifies if it has exactly one `keras.layers.Embedding`. A TF Hub
    SavedModel (`tftransfer.HubLayer`) hides its lookup: `None`.
    """
    layers = model._flatten_layers(include_self=True, recursive=True)
    embeddings = []
    for layer in layers:
        owned = getattr(layer, "token_embedding", None)
        if isinstance(owned, keras.layers.Embedding):
            return owned
        if isinstance(layer, keras.layers.Embedding):
            embeddings.append(layer)
    return embeddings[0] if len(embeddings) == 1 else None


def last_spatial_layer(model: keras.Model, sample) -> keras.Layer:
    """The leaf layer whose output is the model's last spatial feature map.

    Runs `model` once on `sample` with every leaf layer hooked and returns
    the last one, in the order they ran, whose output is
    `[batch, height, width, channels]` with more than one position.

    Raises:
        ArgumentError: if no layer Keras can see gives one (a TF Hub
            SavedModel hides its layers; a text model has none).
    """
    seen = []
    with contextlib.ExitStack() as stack:
        for layer in leaf_layers(model):

            def record(output, layer=layer):
                shape = getattr(output, "shape", None)
                if shape is not None and len(shape) == 4 and shape[1] * shape[2] > 1:
                    seen.append(layer)
                return output

            stack.enter_context(output_hook(layer, record))
        model(sample, training=False)
    if not seen:
        raise ArgumentError(
            f"method='grad_cam' needs a spatial feature map [batch, height, "
            f"width, channels], but no layer of model {model.name!r} that Keras "
            "can see gives one (a TF Hub SavedModel hides its layers). Use "
            "method='integrated_gradients' (on pixels) or method='occlusion'."
        )
    return seen[-1]


def watched(tape: tf.GradientTape, store: list) -> Callable:
    """A hook `transform` that watches the output on `tape` and keeps it."""

    def transform(output):
        tape.watch(output)
        store.append(output)
        return output

    return transform
