"""`Backbone`s over KerasHub presets: image backbones and BERT encoders."""

from __future__ import annotations

import keras

from tftransfer.backbones.description import check_output_key
from tftransfer.backbones.hub_source import name_from_handle
from tftransfer.backbones.text_preprocessing import BertTextPreprocessor
from tftransfer.errors import HandleError

IMAGE_POOLINGS = ("avg", "max")
TEXT_POOLINGS = ("pooled", "cls", "mean")
# The outputs of a KerasHub BERT backbone that `output_key` selects.
TEXT_OUTPUTS = ("pooled_output", "sequence_output")


def keras_hub_backbone(
    cls,
    preset: str,
    *,
    seq_length: int,
    pooling: str | None,
    output_key: str | None,
    name: str | None,
):
    """Implements `Backbone.from_keras_hub`; see there."""
    keras_hub = _import_keras_hub(preset)
    try:
        skeleton = keras_hub.models.Backbone.from_preset(preset, load_weights=False)
    except (ValueError, FileNotFoundError, OSError) as error:
        raise HandleError(
            f"KerasHub cannot load the preset {preset!r}: {error}. Pass a "
            "KerasHub preset name, a `kaggle://` or `hf://` handle (needs a "
            "network), or a folder with a KerasHub, Hugging Face or timm "
            "checkpoint."
        ) from error
    config = {
        "constructor": "from_keras_hub",
        "arguments": {
            "preset": preset,
            "seq_length": seq_length,
            "pooling": pooling,
            "output_key": output_key,
            "name": name,
        },
    }
    name = name or name_from_handle(preset)
    is_text = isinstance(skeleton, keras_hub.models.BertBackbone)
    outputs = TEXT_OUTPUTS if is_text else ()
    check_output_key(name, preset, output_key, outputs)
    if is_text:
        return _text_backbone(
            cls,
            keras_hub,
            preset,
            skeleton,
            seq_length,
            pooling,
            output_key,
            name,
            config,
        )
    if len(skeleton.output_shape) == 4:
        return _image_backbone(cls, keras_hub, preset, skeleton, pooling, name, config)
    raise HandleError(
        f"The KerasHub preset {preset!r} holds a {type(skeleton).__name__}; "
        "tftransfer takes image backbones with a feature map output and "
        "BERT-family text encoders."
    )


def _image_backbone(cls, keras_hub, preset, skeleton, pooling, name, config):
    pooling = pooling or "avg"
    _check_choice(preset, "pooling", pooling, IMAGE_POOLINGS)
    converter = keras_hub.layers.ImageConverter.from_preset(preset)
    if converter is None or converter.image_size is None:
        raise HandleError(
            f"The KerasHub preset {preset!r} does not say its input size and "
            "scaling (no image converter). For a timm folder, give its "
            "config.json a `pretrained_cfg` with `input_size`, `mean` and `std`."
        )
    image_size = tuple(int(s) for s in converter.image_size)
    scale, offset = converter.scale, converter.offset

    def builder(trainable: bool, load_options=None) -> keras.Layer:
        del load_options  # KerasHub reads no SavedModel.
        backbone = keras_hub.models.Backbone.from_preset(preset)
        backbone.trainable = trainable
        images = keras.Input((*image_size, 3), dtype="float32", name="images")
        scaled = keras.layers.Rescaling(scale=scale or 1.0, offset=offset or 0.0)(
            images
        )
        feature_map = backbone(scaled)
        pool = (
            keras.layers.GlobalAveragePooling2D()
            if pooling == "avg"
            else keras.layers.GlobalMaxPooling2D()
        )
        return keras.Model(images, pool(feature_map), name=f"{name}_backbone")

    return cls(
        name=name,
        handle=preset,
        source="keras_hub",
        modality="image",
        feature_dim=int(skeleton.output_shape[-1]),
        builder=builder,
        image_size=image_size,
        value_range=(0.0, 255.0),
        config=config,
    )


def _text_backbone(
    cls, keras_hub, preset, skeleton, seq_length, pooling, output_key, name, config
):
    pooling = pooling or "pooled"
    _check_choice(preset, "pooling", pooling, TEXT_POOLINGS)
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(preset)
    vocabulary = tokenizer.get_vocabulary()
    lowercase = bool(getattr(tokenizer, "lowercase", False))

    def builder(trainable: bool, load_options=None) -> keras.Layer:
        del load_options  # KerasHub reads no SavedModel.
        backbone = keras_hub.models.Backbone.from_preset(preset)
        backbone.trainable = trainable
        return bert_feature_model(backbone, pooling, name, output_key)

    def preprocessor_factory() -> BertTextPreprocessor:
        return BertTextPreprocessor(
            vocabulary, lowercase=lowercase, seq_length=seq_length
        )

    return cls(
        name=name,
        handle=preset,
        source="keras_hub",
        modality="text",
        feature_dim=int(skeleton.hidden_dim),
        builder=builder,
        seq_length=seq_length,
        output_key=output_key,
        outputs=TEXT_OUTPUTS,
        preprocessor_factory=preprocessor_factory,
        config=config,
    )


def bert_feature_model(
    backbone: keras.Model, pooling: str, name: str, output_key: str | None = None
) -> keras.Model:
    """Wraps a KerasHub BERT backbone to take TF Hub-style inputs.

    Args:
        backbone: A `keras_hub.models.BertBackbone`.
        pooling: `"pooled"`, `"cls"` or `"mean"` (masked mean over tokens).
        name: Name of the returned model.
        output_key: `"pooled_output"` or `"sequence_output"` to return that
            backbone output instead of the `pooling` result.

    Returns:
        A `keras.Model` from `{"input_word_ids", "input_mask",
        "input_type_ids"}` (int32 `[batch, tokens]`, any length up to the
        model's maximum) to float32 `[batch, hidden_dim]` (`[batch, tokens,
        hidden_dim]` for `"sequence_output"`).
    """
    inputs = {
        key: keras.Input((None,), dtype="int32", name=key)
        for key in ("input_word_ids", "input_mask", "input_type_ids")
    }
    outputs = backbone(
        {
            "token_ids": inputs["input_word_ids"],
            "segment_ids": inputs["input_type_ids"],
            "padding_mask": inputs["input_mask"],
        }
    )
    if output_key is not None:
        features = outputs[output_key]
    elif pooling == "pooled":
        features = outputs["pooled_output"]
    elif pooling == "cls":
        features = outputs["sequence_output"][:, 0, :]
    else:
        mask = keras.ops.cast(inputs["input_mask"], "float32")[:, :, None]
        total = keras.ops.sum(outputs["sequence_output"] * mask, axis=1)
        features = total / keras.ops.maximum(keras.ops.sum(mask, axis=1), 1e-9)
    return keras.Model(inputs, features, name=f"{name}_backbone")


def _check_choice(preset: str, field: str, value: str, choices: tuple[str, ...]):
    if value not in choices:
        raise HandleError(
            f"Expected {field} to be one of {choices} for the KerasHub preset "
            f"{preset!r}. Received: {field}={value!r}."
        )


def _import_keras_hub(preset: str):
    try:
        import keras_hub
    except ImportError as error:
        raise HandleError(
            f"The preset {preset!r} needs KerasHub: `pip install "
            "tftransfer[keras-hub]` (keras-hub and safetensors)."
        ) from error
    return keras_hub
