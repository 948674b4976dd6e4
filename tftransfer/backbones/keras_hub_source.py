"""The backbone source of KerasHub presets ("keras_hub"): image backbones
and BERT encoders."""

from __future__ import annotations

import os
from typing import Any

import keras

from tftransfer.backbones.description import Backbone, check_output_key
from tftransfer.backbones.hub_source import name_from_handle
from tftransfer.backbones.registry import register_source
from tftransfer.backbones.source import BackboneSource, check_pooling
from tftransfer.backbones.text_preprocessing import BertTextPreprocessor
from tftransfer.errors import HandleError

IMAGE_POOLINGS = ("mean", "max")
TEXT_POOLINGS = ("pooled", "first", "mean")
# The outputs of a KerasHub BERT backbone that `output_key` selects.
TEXT_OUTPUTS = ("pooled_output", "sequence_output")
_PREFIX = "keras_hub:"
_SCHEMES = ("kaggle://", "hf://")
_CHECKPOINT_FILES = ("metadata.json", "config.json")


class KerasHubSource(BackboneSource):
    """KerasHub presets: image backbones and BERT-family text encoders.

    Handles: `"keras_hub:<preset name or folder>"`, a `kaggle://` or
    `hf://` handle, or a local folder with a KerasHub, Hugging Face or timm
    checkpoint (`metadata.json` or `config.json`, and no `saved_model.pb`).
    Implements `Backbone.from_keras_hub`; see there.
    """

    name = "keras_hub"
    form = "prefix"
    accepts = (
        '"keras_hub:<preset>" (a KerasHub preset name or folder), a '
        '"kaggle://..." / "hf://..." KerasHub handle, or a local KerasHub, '
        "Hugging Face or timm checkpoint folder (metadata.json or config.json)"
    )

    def is_supported(self, handle: str, **options: Any) -> bool:
        if handle.startswith((_PREFIX, *_SCHEMES)):
            return True
        return (
            os.path.isdir(handle)
            and not os.path.exists(os.path.join(handle, "saved_model.pb"))
            and any(os.path.exists(os.path.join(handle, f)) for f in _CHECKPOINT_FILES)
        )

    def build(
        self,
        handle: str,
        *,
        seq_length: int = 128,
        pooling: str | None = None,
        output_key: str | None = None,
        name: str | None = None,
    ) -> Backbone:
        preset = handle[len(_PREFIX) :] if handle.startswith(_PREFIX) else handle
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
        name = name or name_from_handle(preset)
        is_text = isinstance(skeleton, keras_hub.models.BertBackbone)
        check_output_key(name, preset, output_key, TEXT_OUTPUTS if is_text else ())
        if is_text:
            return _text_backbone(
                keras_hub, preset, skeleton, seq_length, pooling, output_key, name
            )
        if len(skeleton.output_shape) == 4:
            return _image_backbone(keras_hub, preset, skeleton, pooling, name)
        raise HandleError(
            f"The KerasHub preset {preset!r} holds a {type(skeleton).__name__}; "
            "tftransfer takes image backbones with a feature map output and "
            "BERT-family text encoders."
        )


def _image_backbone(keras_hub, preset, skeleton, pooling, name) -> Backbone:
    pooling = check_pooling(preset, pooling or "mean", IMAGE_POOLINGS)
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
            if pooling == "mean"
            else keras.layers.GlobalMaxPooling2D()
        )
        return keras.Model(images, pool(feature_map), name=f"{name}_backbone")

    return Backbone(
        name=name,
        handle=preset,
        modality="image",
        feature_dim=int(skeleton.output_shape[-1]),
        builder=builder,
        image_size=image_size,
        value_range=(0.0, 255.0),
    )


def _text_backbone(
    keras_hub, preset, skeleton, seq_length, pooling, output_key, name
) -> Backbone:
    pooling = check_pooling(preset, pooling or "pooled", TEXT_POOLINGS)
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

    return Backbone(
        name=name,
        handle=preset,
        modality="text",
        feature_dim=int(skeleton.hidden_dim),
        builder=builder,
        seq_length=seq_length,
        output_key=output_key,
        outputs=TEXT_OUTPUTS,
        preprocessor_factory=preprocessor_factory,
    )


def bert_feature_model(
    backbone: keras.Model, pooling: str, name: str, output_key: str | None = None
) -> keras.Model:
    """Wraps a KerasHub BERT backbone to take TF Hub-style inputs.

    Args:
        backbone: A `keras_hub.models.BertBackbone`.
        pooling: `"pooled"`, `"first"` (the `[CLS]` token) or `"mean"`
            (masked mean over tokens).
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
    elif pooling == "first":
        features = outputs["sequence_output"][:, 0, :]
    else:
        mask = keras.ops.cast(inputs["input_mask"], "float32")[:, :, None]
        total = keras.ops.sum(outputs["sequence_output"] * mask, axis=1)
        features = total / keras.ops.maximum(keras.ops.sum(mask, axis=1), 1e-9)
    return keras.Model(inputs, features, name=f"{name}_backbone")


def _import_keras_hub(preset: str):
    try:
        import keras_hub
    except ImportError as error:
        raise HandleError(
            f"The preset {preset!r} needs KerasHub: `pip install "
            "tftransfer[keras-hub]` (keras-hub and safetensors)."
        ) from error
    return keras_hub


register_source(KerasHubSource())
