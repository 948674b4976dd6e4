"""Backbone sources over TF Hub SavedModels: image feature vectors ("hub")
and text encoders with their preprocessor ("hub_text")."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from tftransfer.backbones.description import Backbone
from tftransfer.backbones.hub_text_preprocessor import HubTextPreprocessor
from tftransfer.backbones.layer_features import (
    SEQUENCE_POOLINGS,
    concatenate,
    pooled_sequences,
    select_layers,
)
from tftransfer.backbones.registry import register_source
from tftransfer.backbones.source import BackboneSource, check_pooling
from tftransfer.errors import ConfigError, ExportError, HandleError, InputSpecError

_FEATURE_KEYS = ("default", "feature_vector", "pooled_output", "outputs")
# The output of BERT-style TF Hub encoders with one sequence per layer.
_LAYERS_KEY = "encoder_outputs"
_SCHEMES = ("http://", "https://", "gs://", "file://")


class _HubSource(BackboneSource):
    """What the TF Hub sources share: their handles, and hubify's refusal."""

    form = "url"
    # Text encoders are told apart by the `preprocessor=` they come with.
    takes_preprocessor = False

    def is_supported(self, handle: str, **options: Any) -> bool:
        given = "preprocessor" in options
        return given == self.takes_preprocessor and _is_saved_model(handle)

    def check_hubify(self, backbone: Backbone) -> None:
        raise ExportError(
            f"Backbone {backbone.name!r} ({backbone.handle}) already is a TF Hub "
            "SavedModel; use its handle directly instead of hubifying it."
        )


class HubImageSource(_HubSource):
    """TF Hub image feature vector models (TF2 reusable SavedModels).

    Handles: an `http(s)://`, `gs://` or `file://` URL, or a local
    SavedModel folder. Implements `Backbone.from_hub`; see there.
    """

    name = "hub"
    accepts = (
        "an http(s)://, gs:// or file:// URL of a TF Hub model, or a local "
        "TF Hub SavedModel folder (saved_model.pb)"
    )

    def works_offline(self, handle: str, **options: Any) -> bool:
        return is_local_or_cached(handle)

    def build(
        self,
        handle: str,
        *,
        image_size: tuple[int, int] | None = None,
        value_range: tuple[float, float] | None = None,
        output_key: str | None = None,
        name: str | None = None,
    ) -> Backbone:
        return _image_backbone(handle, image_size, value_range, output_key, name)


class HubTextSource(_HubSource):
    """TF Hub text encoders with their preprocessor (BERT family, or none
    for encoders of raw strings). Handles: the encoder's, as for
    `HubImageSource`, with `preprocessor=`. Implements
    `Backbone.from_hub_text`; see there.
    """

    name = "hub_text"
    takes_preprocessor = True
    accepts = (
        "the same, with preprocessor=<its TF Hub preprocessor, or None> for a "
        "text encoder"
    )

    def works_offline(self, handle: str, **options: Any) -> bool:
        preprocessor = options.get("preprocessor")
        return all(is_local_or_cached(h) for h in (handle, preprocessor) if h)

    def build(
        self,
        handle: str,
        *,
        preprocessor: str | None,
        seq_length: int = 128,
        output_key: str | None = None,
        layers: Sequence[int | str] | None = None,
        pooling: str | None = None,
        name: str | None = None,
    ) -> Backbone:
        if layers is None and pooling is not None:
            raise ConfigError(
                f"pooling={pooling!r} for backbone {handle!r} pools the "
                "`layers` it is given; the encoder's own outputs are chosen "
                "with output_key=. Pass layers= too, or omit pooling."
            )
        return _text_backbone(
            preprocessor, handle, seq_length, output_key, name, layers, pooling
        )


def _image_backbone(
    handle: str,
    image_size: tuple[int, int] | None,
    value_range: tuple[float, float] | None,
    output_key: str | None,
    name: str | None,
) -> Backbone:
    loaded = _load(handle)
    spec = _call_input_spec(loaded, handle)
    if not isinstance(spec, tf.TensorSpec) or spec.shape.rank != 4:
        raise HandleError(
            f"Expected the TF Hub model {handle!r} to take images "
            f"[batch, height, width, 3]. Received a signature taking {spec}. "
            "For text models use `Backbone.from_hub_text(preprocessor, encoder)`."
        )
    signature_size = tuple(spec.shape[1:3])
    if None not in signature_size:
        if image_size is not None and tuple(image_size) != signature_size:
            raise InputSpecError(
                f"The TF Hub model {handle!r} takes images of size "
                f"{signature_size}. Received: image_size={tuple(image_size)}. "
                "Omit `image_size` to use the model's own."
            )
        image_size = signature_size
    if image_size is None:
        raise InputSpecError(
            f"The TF Hub model {handle!r} accepts any image size; pass "
            "`image_size=(height, width)` (for example the size it was trained at)."
        )
    if value_range is None:
        value_range = (0.0, 255.0) if spec.dtype == tf.uint8 else (0.0, 1.0)
    zeros = tf.zeros((1, *image_size, 3), spec.dtype)
    outputs = loaded(zeros)
    output_key = _pick_output_key(outputs, output_key, handle)
    features = outputs[output_key] if output_key else outputs
    if features.shape.rank != 2:
        raise HandleError(
            f"Expected the TF Hub model {handle!r} to return a feature vector "
            f"[batch, dim]. Received shape {features.shape}. Use a "
            "`feature_vector` model, not a `classification` or feature-map one."
        )
    input_dtype = spec.dtype

    def builder(
        trainable: bool, load_options: tf.saved_model.LoadOptions | None = None
    ) -> keras.Layer:
        return _image_hub_layer(
            handle, trainable, output_key, image_size, input_dtype, load_options
        )

    return Backbone(
        name=name or name_from_handle(handle),
        handle=handle,
        modality="image",
        feature_dim=int(features.shape[-1]),
        builder=builder,
        image_size=image_size,
        value_range=value_range,
        output_key=output_key,
        outputs=_output_keys(outputs),
    )


def _text_backbone(
    preprocessor: str | None,
    encoder: str,
    seq_length: int,
    output_key: str | None,
    name: str | None,
    layers: Sequence[int | str] | None = None,
    pooling: str | None = None,
) -> Backbone:
    from tftransfer.hub import resolve

    loaded = _load(encoder)
    preprocessor_path = resolve(preprocessor) if preprocessor else None
    text_preprocessor = HubTextPreprocessor(preprocessor_path, seq_length)
    outputs = loaded(text_preprocessor(tf.constant(["a"])))
    if layers is not None:
        probed = outputs.get(_LAYERS_KEY) if isinstance(outputs, dict) else None
        if not isinstance(probed, (list, tuple)):
            raise ConfigError(
                f"The TF Hub encoder {encoder!r} returns no {_LAYERS_KEY!r} (one "
                "output per layer), so `layers` cannot apply. Its outputs are "
                f"{list(_output_keys(outputs))}; choose one with output_key=."
            )
        return _encoder_layers_backbone(
            encoder,
            name or name_from_handle(encoder),
            [int(t.shape[-1]) for t in probed],
            layers,
            pooling,
            output_key,
            seq_length=seq_length if preprocessor else None,
            outputs=_output_keys(outputs),
            preprocessor_factory=lambda: text_preprocessor,
        )
    if output_key is None and isinstance(outputs, dict) and "pooled_output" in outputs:
        output_key = "pooled_output"
    key = _pick_output_key(outputs, output_key, encoder)
    features = outputs[key] if key else outputs

    def builder(
        trainable: bool, load_options: tf.saved_model.LoadOptions | None = None
    ) -> keras.Layer:
        from tftransfer.hub import HubLayer

        return HubLayer(
            encoder,
            trainable=trainable,
            output_key=key,
            load_options=load_options,
        )

    return Backbone(
        name=name or name_from_handle(encoder),
        handle=encoder,
        modality="text",
        feature_dim=int(features.shape[-1]),
        builder=builder,
        seq_length=seq_length if preprocessor else None,
        output_key=key,
        outputs=_output_keys(outputs),
        # The preprocessor that probed the encoder is the one reused.
        preprocessor_factory=lambda: text_preprocessor,
    )


def _encoder_layers_backbone(
    handle: str,
    name: str,
    widths: list[int],
    layers: Sequence[int | str],
    pooling: str | None,
    output_key: str | None,
    **description: Any,
) -> Backbone:
    """The text `Backbone` of the encoder `handle` giving the selected layers
    of its `encoder_outputs` (BERT-style: one `[batch, tokens, dim]` output
    per transformer layer, of `widths` features each), each pooled over the
    unmasked tokens (or not, for `"sequence_output"`), concatenated.
    `description` holds the rest of the `Backbone`'s arguments."""
    pooling = check_pooling(handle, pooling or "mean", SEQUENCE_POOLINGS)
    if output_key not in (None, "sequence_output"):
        raise ConfigError(
            f"With `layers`, backbone {handle!r} gives their pooled outputs "
            "(output_key=None) or their token outputs "
            f"(output_key='sequence_output'). Received: output_key={output_key!r}."
        )
    feature_layers = tuple(f"{_LAYERS_KEY}_{i}" for i in range(len(widths)))
    names = select_layers(handle, layers, feature_layers)
    indices = [feature_layers.index(name) for name in names]

    def builder(
        trainable: bool, load_options: tf.saved_model.LoadOptions | None = None
    ) -> keras.Layer:
        from tftransfer.hub import HubLayer

        layer = HubLayer(
            handle,
            trainable=trainable,
            output_key=_LAYERS_KEY,
            load_options=load_options,
        )
        inputs = {
            key: keras.Input((None,), dtype="int32", name=key)
            for key in ("input_word_ids", "input_mask", "input_type_ids")
        }
        every_layer = layer(inputs)
        sequences = [every_layer[i] for i in indices]
        if output_key == "sequence_output":
            features = concatenate(sequences)
        else:
            features = pooled_sequences(sequences, pooling, inputs["input_mask"])
        return keras.Model(inputs, features, name=f"{name}_layers")

    return Backbone(
        name=name,
        handle=handle,
        modality="text",
        feature_dim=sum(widths[i] for i in indices),
        builder=builder,
        output_key=output_key,
        feature_layers=feature_layers,
        **description,
    )


def is_local_or_cached(handle: str) -> bool:
    """Whether `handle` is a local folder or already in tensorflow_hub's
    cache (whose folders are named by the SHA-1 of the handle)."""
    from tensorflow_hub import resolver

    if os.path.isdir(handle):
        return True
    cache = resolver.tfhub_cache_dir(use_temp=True)
    digest = hashlib.sha1(handle.encode("utf8")).hexdigest()
    return os.path.isdir(os.path.join(cache, digest))


def _is_saved_model(handle: str) -> bool:
    """A URL a TF Hub resolver reads, or a local SavedModel folder."""
    return handle.startswith(_SCHEMES) or os.path.exists(
        os.path.join(handle, "saved_model.pb")
    )


def name_from_handle(handle: str) -> str:
    """A short name for a model: its handle's last meaningful path part.

    >>> name_from_handle("https://tfhub.dev/google/imagenet/"
    ...                  "mobilenet_v2_100_224/feature_vector/5")
    'mobilenet_v2_100_224'
    """
    parts = [p for p in re.split(r"[/\\]+", handle.rstrip("/")) if p]
    skip = {"feature_vector", "classification", "tensorFlow2", "tensorflow2"}
    for part in reversed(parts):
        if not part.isdigit() and part not in skip and ":" not in part:
            return re.sub(r"[^A-Za-z0-9_.-]+", "_", part)
    return "backbone"


def _load(handle: str) -> Any:
    """Resolves `handle` and loads the SavedModel to read its signature.

    Inside a strategy's scope it reads with the strategy's load options
    (`tftransfer.distribute.load_options`: on TPUs the local host reads).
    """
    from tftransfer import distribute
    from tftransfer.hub import resolve

    options = distribute.load_options(tf.distribute.get_strategy())
    return tf.saved_model.load(resolve(handle), options=options)


def _call_input_spec(loaded: Any, handle: str) -> Any:
    try:
        functions = loaded.__call__.concrete_functions
    except AttributeError:
        functions = None
    if not functions:
        raise HandleError(
            f"The SavedModel {handle!r} has no `__call__` function, so it is not "
            "a TF2 reusable SavedModel. Export it with `tftransfer.hubify()` or "
            "pass a TF2 model from TF Hub."
        )
    args, _ = functions[0].structured_input_signature
    return args[0]


def _output_keys(outputs: Any) -> tuple[str, ...]:
    """The keys of a model's dict output, empty for a single tensor."""
    return tuple(sorted(outputs)) if isinstance(outputs, dict) else ()


def _pick_output_key(outputs: Any, output_key: str | None, handle: str) -> str | None:
    if not isinstance(outputs, dict):
        if output_key is not None:
            raise HandleError(
                f"The model {handle!r} returns a single tensor, so "
                f"output_key={output_key!r} cannot apply. Omit `output_key`."
            )
        return None
    if output_key is None:
        output_key = next((k for k in _FEATURE_KEYS if k in outputs), None)
        if output_key is None and len(outputs) == 1:
            output_key = next(iter(outputs))
    if output_key not in outputs:
        raise HandleError(
            f"The model {handle!r} returns the outputs {sorted(outputs)}. "
            f"Received: output_key={output_key!r}. Pass one of those."
        )
    return output_key


def _image_hub_layer(
    handle: str,
    trainable: bool,
    output_key: str | None,
    image_size: tuple[int, int],
    input_dtype: tf.DType,
    load_options: tf.saved_model.LoadOptions | None,
) -> keras.Layer:
    from tftransfer.hub import HubLayer

    layer = HubLayer(
        handle, trainable=trainable, output_key=output_key, load_options=load_options
    )
    if input_dtype == tf.float32:
        return layer
    images = keras.Input((*image_size, 3), dtype="float32")
    features = layer(keras.ops.cast(images, input_dtype.name))
    return keras.Model(images, features, name=f"{layer.name}_float_input")


register_source(HubImageSource())
register_source(HubTextSource())
