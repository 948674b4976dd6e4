"""`Backbone`s over `keras.applications` models."""

from __future__ import annotations

import importlib
import os

import keras

from tftransfer.errors import HandleError, HandleNotFoundError

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


def application_backbone(
    cls,
    name: str,
    *,
    weights: str | None,
    image_size: tuple[int, int] | None,
    pooling: str,
):
    """Implements `Backbone.from_keras_application`; see there."""
    constructor = getattr(keras.applications, name, None)
    if not callable(constructor):
        available = sorted(n for n in dir(keras.applications) if n[:1].isupper())
        raise HandleError(
            f"`keras.applications` has no model {name!r}. Use one of: "
            f"{', '.join(available)}."
        )
    if weights not in (None, "imagenet"):
        weights = os.fspath(weights)
        if not os.path.exists(weights):
            raise HandleNotFoundError(
                f"The weights file {weights!r} for {name} does not exist. Pass "
                "an existing `.h5`/`.weights.h5` file, 'imagenet' or None."
            )
    if pooling not in ("avg", "max"):
        raise HandleError(
            f"Expected pooling='avg' or 'max' for {name}. Received: pooling={pooling!r}."
        )
    if image_size is None:
        size = _DEFAULT_SIZES.get(name, 224)
        image_size = (size, size)
    image_size = (int(image_size[0]), int(image_size[1]))
    preprocess_input = importlib.import_module(constructor.__module__).preprocess_input

    def builder(
        trainable: bool, load_options=None, weights: str | None = weights
    ) -> keras.Layer:
        del load_options  # keras.applications read no SavedModel.
        base = constructor(
            include_top=False,
            weights=weights,
            input_shape=(*image_size, 3),
            pooling=pooling,
        )
        base.trainable = trainable
        images = keras.Input((*image_size, 3), dtype="float32", name="images")
        features = base(preprocess_input(images))
        return keras.Model(images, features, name=f"{base.name}_backbone")

    feature_dim = builder(False, weights=None).output_shape[-1]
    handle = f"keras.applications.{name}"
    return cls(
        name=name,
        handle=handle,
        source="keras_application",
        modality="image",
        feature_dim=feature_dim,
        builder=builder,
        image_size=image_size,
        value_range=(0.0, 255.0),
        config={
            "constructor": "from_keras_application",
            "arguments": {
                "name": name,
                "weights": weights,
                "image_size": list(image_size),
                "pooling": pooling,
            },
        },
    )
