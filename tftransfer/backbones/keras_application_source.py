"""The backbone source of `keras.applications` models ("keras_application")."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import keras

from tftransfer.backbones import layer_features
from tftransfer.backbones.description import Backbone, check_output_key
from tftransfer.backbones.registry import register_source
from tftransfer.backbones.source import (
    BackboneSource,
    check_pooling,
    seeded_initialization,
)
from tftransfer.errors import HandleError, HandleNotFoundError

_PREFIXES = ("keras.applications.", "keras:")
# The vocabulary's pooling words, as keras.applications spells them.
_KERAS_POOLING = {"mean": "avg", "max": "max"}

# Default input sizes that differ from 224 x 224.
_DEFAULT_SIZES = {
    "EfficientNetB1": 240,
    "EfficientNetB2": 260,
    "EfficientNetB3": 300,
    "EfficientNetB4": 380,
    "EfficientNetB5": 456,
    "EfficientNetB6": 528,
    "EfficientNetB7": 600,
    "EfficientNetV2B1": 240,
    "EfficientNetV2B2": 260,
    "EfficientNetV2B3": 300,
    "EfficientNetV2S": 384,
    "EfficientNetV2M": 480,
    "EfficientNetV2L": 480,
    "InceptionResNetV2": 299,
    "InceptionV3": 299,
    "NASNetLarge": 331,
    "Xception": 299,
}


class KerasApplicationSource(BackboneSource):
    """`keras.applications` models without their top.

    Handles: `"keras:<Name>"` or `"keras.applications.<Name>"` (the bare
    name too, through `Backbone.from_keras_application`, which this
    implements; see there). `name=` names the backbone (the application's
    name by default), as the catalogue does for its entries.
    """

    name = "keras_application"
    form = "prefix"
    accepts = (
        '"keras.applications.<Name>" or "keras:<Name>" (e.g. "keras:EfficientNetV2B0")'
    )

    def is_supported(self, handle: str, **options: Any) -> bool:
        return handle.startswith(_PREFIXES)

    def build(
        self,
        handle: str,
        *,
        weights: str | None = "imagenet",
        image_size: tuple[int, int] | None = None,
        pooling: str = "mean",
        layers: Sequence[int | str] | None = None,
        output_key: str | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> Backbone:
        application_name = _application_name(handle)
        if weights not in (None, "imagenet"):
            weights = os.fspath(weights)
            if not os.path.exists(weights):
                raise HandleNotFoundError(
                    f"The weights file {weights!r} for {application_name} does not "
                    "exist. Pass an existing `.h5`/`.weights.h5` file, 'imagenet' "
                    "or None."
                )
        return application_backbone(
            application_name,
            image_size,
            pooling,
            lambda base: base,
            weights=weights,
            layers=layers,
            output_key=output_key,
            seed=seed,
            name=name,
        )


def application(name: str) -> Callable[..., keras.Model]:
    """Returns `keras.applications.<name>`.

    Raises:
        HandleError: listing the applications, if there is none by `name`.
    """
    constructor = getattr(keras.applications, name, None)
    if not callable(constructor):
        available = sorted(n for n in dir(keras.applications) if n[:1].isupper())
        raise HandleError(
            f"`keras.applications` has no model {name!r}. Use one of: "
            f"{', '.join(available)}."
        )
    return constructor


def application_backbone(
    application_name: str,
    image_size: tuple[int, int] | None,
    pooling: str,
    load: Callable[[keras.Model], keras.Model],
    *,
    weights: str | None = None,
    layers: Sequence[int | str] | None = None,
    output_key: str | None = None,
    seed: int = 0,
    handle: str | None = None,
    name: str | None = None,
) -> Backbone:
    """A `Backbone` over `keras.applications.<application_name>`, without
    its top.

    Args:
        application_name: The application's name (see `application()`).
        image_size: `(height, width)`, or `None` for its default size.
        pooling: `"mean"` or `"max"` (`tftransfer.vocabulary.POOLINGS`).
        load: Called with each new application model (built with
            `weights`) before it is wrapped; returns it, with any weights
            it assigns.
        weights: What `keras.applications` loads itself: `"imagenet"`, a
            weights file or `None` (random weights, seeded by `seed`).
        layers: Intermediate layers whose outputs, pooled, are concatenated
            into the features (see `Backbone`); `None` for the model's
            output.
        output_key: `"feature_map"` for the unpooled features
            `[batch, height * width, channels]`, or `None`.
        seed: Seed of the random initial weights (see
            `tftransfer.backbones.source.seeded_initialization`).
        handle: The backbone's handle;
            `"keras.applications.<application_name>"` by default.
        name: The backbone's short name; `application_name` by default.

    Returns:
        A `Backbone` taking float32 images in `(0, 255)` (the application's
        own preprocessing is inside).
    """
    constructor = application(application_name)
    handle = handle or f"keras.applications.{application_name}"
    name = name or application_name
    pooling = check_pooling(handle, pooling, ("mean", "max"))
    check_output_key(name, handle, output_key, (layer_features.FEATURE_MAP,))
    if image_size is None:
        size = _DEFAULT_SIZES.get(application_name, 224)
        image_size = (size, size)
    image_size = (int(image_size[0]), int(image_size[1]))
    preprocess_input = importlib.import_module(constructor.__module__).preprocess_input
    # The application's own pooling where it gives the result; else ours.
    own_pooling = layers is None and output_key is None

    def base_model(weights: str | None, pooled: bool) -> keras.Model:
        return constructor(
            include_top=False,
            weights=weights,
            input_shape=(*image_size, 3),
            pooling=_KERAS_POOLING[pooling] if pooled else None,
        )

    skeleton = base_model(None, pooled=False)
    feature_layers = layer_features.stage_ends(skeleton)
    names = (
        layer_features.select_layers(
            handle, layers, feature_layers, [layer.name for layer in skeleton.layers]
        )
        if layers is not None
        else (layer_features.layer_name(skeleton.output),)
    )
    specs = layer_features.output_specs(skeleton, names)
    layer_features.check_ranks(handle, names, specs, 4, "feature maps")
    if output_key == layer_features.FEATURE_MAP:
        layer_features.check_same_size(handle, names, specs)

    def builder(trainable: bool, load_options=None) -> keras.Layer:
        del load_options  # keras.applications read no SavedModel.
        with seeded_initialization(seed):
            base = load(base_model(weights, pooled=own_pooling))
        base.trainable = trainable
        images = keras.Input((*image_size, 3), dtype="float32", name="images")
        scaled = preprocess_input(images)
        if own_pooling:
            return keras.Model(images, base(scaled), name=f"{base.name}_backbone")
        maps = layer_features.outputs_model(base, names)(scaled)
        features = layer_features.image_features(maps, output_key, pooling)
        return keras.Model(images, features, name=f"{base.name}_backbone")

    return Backbone(
        name=name,
        handle=handle,
        modality="image",
        feature_dim=sum(int(spec.shape[-1]) for spec in specs),
        builder=builder,
        image_size=image_size,
        value_range=(0.0, 255.0),
        output_key=output_key,
        outputs=(layer_features.FEATURE_MAP,),
        feature_layers=feature_layers,
    )


def _application_name(handle: str) -> str:
    for prefix in _PREFIXES:
        if handle.startswith(prefix):
            return handle[len(prefix) :]
    return handle


register_source(KerasApplicationSource())
