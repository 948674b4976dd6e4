"""`hubify`: write a Keras backbone as a TF Hub reusable SavedModel."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import NamedTuple

import keras
import tensorflow as tf

from tftransfer.backbones import registry
from tftransfer.backbones.description import Backbone
from tftransfer.backbones.text_preprocessing import BertTextPreprocessor
from tftransfer.errors import ExportError
from tftransfer.serving_ops import saved_model_ops, unsupported_ops

_TEXT_KEYS = ("input_word_ids", "input_mask", "input_type_ids")


class HubModel(NamedTuple):
    """Where `hubify` wrote a backbone.

    Attributes:
        path: The TF Hub reusable SavedModel of the encoder.
        preprocessor_path: The text preprocessor SavedModel (BERT family),
            else `None`.
    """

    path: str
    preprocessor_path: str | None = None


class ReusableSavedModel(tf.__internal__.tracking.AutoTrackable):
    """A Keras layer with the attributes of a TF Hub reusable SavedModel.

    `__call__(inputs, training)` is traced for `training=False` and `True`;
    `variables`, `trainable_variables` and `regularization_losses` (one
    argument-less function per weight regularizer) are attributes, as
    `hub.KerasLayer` and `tftransfer.HubLayer` expect.

    Args:
        layer: The Keras layer (built with trainable weights).
        input_spec: A `tf.TensorSpec` or dict of them for `inputs`.
        output_keys: If given, outputs are a dict with these keys, all
            holding the layer's output (TF Hub's text encoder convention).
        value_range: If given, image inputs in `[0, 1]` (TF Hub's image
            convention) are mapped to this range before the layer.
    """

    def __init__(self, layer, input_spec, output_keys=None, value_range=None):
        self._layer = layer
        self._output_keys = tuple(output_keys) if output_keys else None
        self._value_range = value_range
        self.variables = list(layer.variables)
        self.trainable_variables = list(layer.trainable_variables)
        self.regularization_losses = [
            _regularization_loss(variable)
            for variable in layer.weights
            if getattr(variable, "regularizer", None) is not None
        ]
        for training in (False, True):
            self.__call__.get_concrete_function(input_spec, training)

    @tf.function
    def __call__(self, inputs, training=False):
        if self._value_range is not None:
            low, high = self._value_range
            inputs = inputs * (high - low) + low
        outputs = self._layer(inputs, training=training)
        if self._output_keys:
            return {key: outputs for key in self._output_keys}
        return outputs


def hubify(
    model: Backbone | keras.Model,
    path: str | os.PathLike,
    *,
    preprocessor_path: str | os.PathLike | None = None,
) -> HubModel:
    """Writes a Keras backbone as a TF Hub reusable SavedModel.

    The SavedModel loads in `tftransfer.HubLayer` and in the legacy
    `hub.KerasLayer` (inside a `tf_keras` model). Image backbones take
    float32 `[batch, height, width, 3]` in `[0, 1]` (TF Hub's image
    convention; they are mapped to the backbone's `value_range` inside) and
    return `[batch, feature_dim]`, so `Backbone.from_hub()` describes the
    result correctly. Text backbones (BERT family) take TF Hub's
    dict of int32 `input_word_ids`, `input_mask` and `input_type_ids` and
    return a dict whose `"pooled_output"` and `"default"` hold the feature
    vector; their text preprocessor is written too, built only from TF Text
    ops that TF Serving ships, with TF Hub's preprocessor interface
    (default call on strings, `tokenize`, `bert_pack_inputs`).

    Both SavedModels are written to temporary sibling folders, checked, and
    only then renamed into place, so a failure leaves neither behind; an
    existing folder at a target is an error.

    Args:
        model: A `Backbone` whose source can hubify it (every one but the
            TF Hub sources, see `BackboneSource.check_hubify`), or a
            `keras.Model` with fixed inputs (its own input specs are used and
            its inputs are passed through unchanged).
        path: Folder for the encoder SavedModel.
        preprocessor_path: Folder for the text preprocessor; defaults to
            `<path>_preprocessor`. Text backbones only.

    Returns:
        A `HubModel(path, preprocessor_path)`.

    Raises:
        ExportError: if the target exists, the backbone's source refuses
            (it already is a TF Hub SavedModel), or the preprocessor would
            need ops TF Serving lacks.

    Example:

    >>> minilm = tftransfer.backbone("all-minilm-l6-v2")
    >>> written = tftransfer.hubify(minilm, "/tmp/minilm")
    >>> hub_minilm = tftransfer.Backbone.from_hub_text(
    ...     written.preprocessor_path, written.path)
    """
    path = os.fspath(path)
    value_range = None
    if isinstance(model, Backbone):
        layer, spec, output_keys, preprocessor = _backbone_parts(model)
        if model.modality == "image" and model.value_range != (0.0, 1.0):
            value_range = model.value_range
    elif isinstance(model, keras.Model):
        layer, spec, output_keys, preprocessor = model, _model_spec(model), None, None
    else:
        raise ExportError(
            f"Expected a tftransfer.Backbone or a keras.Model to hubify into "
            f"{path!r}. Received: {type(model).__name__}."
        )
    modules = {path: ReusableSavedModel(layer, spec, output_keys, value_range)}
    if preprocessor is not None:
        preprocessor_path = os.fspath(preprocessor_path or f"{path}_preprocessor")
        modules[preprocessor_path] = preprocessor
    with _staged(modules) as staged:
        if preprocessor is not None:
            unsupported = unsupported_ops(saved_model_ops(staged[preprocessor_path]))
            if unsupported:
                raise ExportError(
                    f"The text preprocessor for {preprocessor_path!r} uses ops "
                    f"that TF Serving lacks: {sorted(unsupported)}. Nothing "
                    f"was written to {path!r} or {preprocessor_path!r}."
                )
    return HubModel(path, preprocessor_path if preprocessor is not None else None)


def _backbone_parts(backbone: Backbone):
    if backbone.source is not None:
        registry.get_source(backbone.source).check_hubify(backbone)
    layer = backbone.build(trainable=True)
    if backbone.modality == "image":
        spec = tf.TensorSpec([None, *backbone.image_size, 3], tf.float32)
        return layer, spec, None, None
    preprocessor = backbone.text_preprocessor()
    if not isinstance(preprocessor, BertTextPreprocessor):
        raise ExportError(
            f"Backbone {backbone.name!r} has no TF Serving-safe BERT "
            "preprocessor to write."
        )
    spec = {key: tf.TensorSpec([None, None], tf.int32, name=key) for key in _TEXT_KEYS}
    return layer, spec, ("pooled_output", "default"), preprocessor


def _model_spec(model: keras.Model):
    def spec(tensor):
        return tf.TensorSpec(tensor.shape, tensor.dtype, name=tensor.name)

    inputs = model.inputs
    if isinstance(model.input, dict):
        return {key: spec(tensor) for key, tensor in model.input.items()}
    return spec(inputs[0]) if len(inputs) == 1 else [spec(t) for t in inputs]


def _regularization_loss(variable):
    return tf.function(lambda: variable.regularizer(variable.value), input_signature=[])


@contextlib.contextmanager
def _staged(modules: dict[str, tf.Module]) -> Iterator[dict[str, str]]:
    """Saves each module to a temporary sibling of its target folder.

    Yields `{target: staging folder}` for checks; if the block raises
    nothing, renames every staging folder to its target. Whatever fails,
    no target is left half written and no staging folder remains.

    Raises:
        ExportError: if a target exists.
    """
    for path in modules:
        if os.path.exists(path):
            raise ExportError(
                f"{path!r} already exists; hubify does not overwrite. Remove it "
                "or choose another path."
            )
    staged: dict[str, str] = {}
    placed: list[str] = []
    try:
        for path, module in modules.items():
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
            staged[path] = tempfile.mkdtemp(
                prefix=f".{os.path.basename(path)}.", dir=parent
            )
            tf.saved_model.save(module, staged[path])
        yield staged
        for path, staging in staged.items():
            os.rename(staging, path)
            placed.append(path)
    except BaseException:
        for path in placed:
            shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        for staging in staged.values():
            shutil.rmtree(staging, ignore_errors=True)
