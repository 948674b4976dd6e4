"""The backbone source of KerasHub presets ("keras_hub"): image backbones
and BERT encoders."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import keras

from tftransfer.backbones import layer_features
from tftransfer.backbones.description import Backbone, check_output_key
from tftransfer.backbones.hub_source import name_from_handle
from tftransfer.backbones.layer_features import SEQUENCE_POOLINGS
from tftransfer.backbones.registry import register_source
from tftransfer.backbones.source import (
    BackboneSource,
    check_pooling,
    seeded_initialization,
)
from tftransfer.backbones.text_preprocessing import BertTextPreprocessor
from tftransfer.errors import ConfigError, HandleError

IMAGE_POOLINGS = ("mean", "max")
TEXT_POOLINGS = ("pooled", *SEQUENCE_POOLINGS)
# The outputs that `output_key` selects: of a KerasHub BERT backbone, and
# the unpooled feature map of an image backbone.
TEXT_OUTPUTS = ("pooled_output", "sequence_output")
IMAGE_OUTPUTS = (layer_features.FEATURE_MAP,)
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
        layers: Sequence[int | str] | None = None,
        load_weights: bool = True,
        seed: int = 0,
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
        outputs = TEXT_OUTPUTS if is_text else IMAGE_OUTPUTS
        check_output_key(name, preset, output_key, outputs)

        def load() -> keras.Model:
            """The preset's backbone: its weights, or seeded random ones."""
            with seeded_initialization(seed):
                return keras_hub.models.Backbone.from_preset(
                    preset, load_weights=bool(load_weights)
                )

        if is_text:
            return _text_backbone(
                keras_hub, preset, skeleton, load, seq_length, pooling, output_key,
                layers, name,
            )  # fmt: skip
        if len(skeleton.output_shape) == 4:
            return _image_backbone(
                keras_hub, preset, skeleton, load, pooling, output_key, layers, name
            )
        raise HandleError(
            f"The KerasHub preset {preset!r} holds a {type(skeleton).__name__}; "
            "tftransfer takes image backbones with a feature map output and "
            "BERT-family text encoders."
        )


def _image_backbone(
    keras_hub, preset, skeleton, load, pooling, output_key, layers, name
) -> Backbone:
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
    feature_layers = image_feature_layers(keras_hub, skeleton)
    names = _selected(preset, skeleton, layers, feature_layers)
    specs = layer_features.output_specs(skeleton, names, (1, *image_size, 3))
    layer_features.check_ranks(preset, names, specs, 4, "feature maps")
    if output_key == layer_features.FEATURE_MAP:
        layer_features.check_same_size(preset, names, specs)

    def builder(trainable: bool, load_options=None) -> keras.Layer:
        del load_options  # KerasHub reads no SavedModel.
        backbone = load()
        backbone.trainable = trainable
        images = keras.Input((*image_size, 3), dtype="float32", name="images")
        scaled = keras.layers.Rescaling(scale=scale or 1.0, offset=offset or 0.0)(
            images
        )
        if layers is None:
            maps = [backbone(scaled)]
        else:
            maps = layer_features.outputs_model(backbone, names)(scaled)
        features = layer_features.image_features(maps, output_key, pooling)
        return keras.Model(images, features, name=f"{name}_backbone")

    return Backbone(
        name=name,
        handle=preset,
        modality="image",
        feature_dim=sum(int(spec.shape[-1]) for spec in specs),
        builder=builder,
        image_size=image_size,
        value_range=(0.0, 255.0),
        output_key=output_key,
        outputs=IMAGE_OUTPUTS,
        feature_layers=feature_layers,
    )


def image_feature_layers(keras_hub, model: keras.Model) -> tuple[str, ...]:
    """The stage ends of a KerasHub image backbone, then its output layer.

    EfficientNet: the last layer of each stage's last block (its layers are
    named `block<stage><letter>_...`). Backbones with `pyramid_outputs`
    (ResNet, CSPNet, MiT, ...): the layers giving them, in order. Others:
    `layer_features.stage_ends()`, read from the graph.
    """
    final = layer_features.layer_name(model.output)
    if isinstance(model, keras_hub.models.EfficientNetBackbone):
        stages: dict[str, str] = {}
        for layer in model.layers:
            match = re.match(r"block(\d+)[a-z]+_", layer.name)
            if match:
                stages[match.group(1)] = layer.name
        ends = tuple(stages.values())
    elif isinstance(getattr(model, "pyramid_outputs", None), dict):
        ends = tuple(
            layer_features.layer_name(tensor)
            for tensor in model.pyramid_outputs.values()
        )
    else:
        return layer_features.stage_ends(model)
    return tuple(name for name in ends if name != final) + (final,)


def _selected(preset, skeleton, layers, feature_layers) -> tuple[str, ...]:
    """The names `layers` selects, or the model's output layer for `None`."""
    if layers is None:
        return (layer_features.layer_name(skeleton.output),)
    every_name = [layer.name for layer in skeleton.layers]
    return layer_features.select_layers(preset, layers, feature_layers, every_name)


def _text_backbone(
    keras_hub, preset, skeleton, load, seq_length, pooling, output_key, layers, name
) -> Backbone:
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(preset)
    vocabulary = tokenizer.get_vocabulary()
    lowercase = bool(getattr(tokenizer, "lowercase", False))
    feature_layers = tuple(
        layer.name
        for layer in skeleton.layers
        if isinstance(layer, keras_hub.layers.TransformerEncoder)
    )
    if layers is None:
        pooling = check_pooling(preset, pooling or "pooled", TEXT_POOLINGS)
        names = ()
        feature_dim = int(skeleton.hidden_dim)
    else:
        pooling = check_pooling(preset, pooling or "mean", SEQUENCE_POOLINGS)
        if output_key == "pooled_output":
            raise ConfigError(
                f"output_key='pooled_output' of backbone {name!r} is the pooler "
                "of its last layer, so it cannot apply to `layers`. Omit "
                "output_key (pooling=) or pass 'sequence_output'."
            )
        names = _selected(preset, skeleton, layers, feature_layers)
        specs = layer_features.output_specs(skeleton, names)
        layer_features.check_ranks(
            preset, names, specs, 3, "token sequences [batch, tokens, dim]"
        )
        feature_dim = sum(int(spec.shape[-1]) for spec in specs)

    def builder(trainable: bool, load_options=None) -> keras.Layer:
        del load_options  # KerasHub reads no SavedModel.
        backbone = load()
        backbone.trainable = trainable
        return bert_feature_model(backbone, pooling, name, output_key, names)

    def preprocessor_factory() -> BertTextPreprocessor:
        return BertTextPreprocessor(
            vocabulary, lowercase=lowercase, seq_length=seq_length
        )

    return Backbone(
        name=name,
        handle=preset,
        modality="text",
        feature_dim=feature_dim,
        builder=builder,
        seq_length=seq_length,
        output_key=output_key,
        outputs=TEXT_OUTPUTS,
        preprocessor_factory=preprocessor_factory,
        feature_layers=feature_layers,
    )


def bert_feature_model(
    backbone: keras.Model,
    pooling: str,
    name: str,
    output_key: str | None = None,
    layers: Sequence[str] = (),
) -> keras.Model:
    """Wraps a KerasHub BERT backbone to take TF Hub-style inputs.

    Args:
        backbone: A `keras_hub.models.BertBackbone`.
        pooling: `"pooled"`, `"first"` (the `[CLS]` token), `"mean"`
            (masked mean over tokens) or `"max"` (masked max over tokens).
        name: Name of the returned model.
        output_key: `"pooled_output"` or `"sequence_output"` to return that
            backbone output instead of the `pooling` result.
        layers: Names of layers of `backbone` (transformer layers) whose
            token outputs replace the sequence output: each pooled (or, for
            `"sequence_output"`, not), concatenated along the features.

    Returns:
        A `keras.Model` from `{"input_word_ids", "input_mask",
        "input_type_ids"}` (int32 `[batch, tokens]`, any length up to the
        model's maximum) to float32 `[batch, dim]` (`[batch, tokens, dim]`
        for `"sequence_output"`).
    """
    inputs = {
        key: keras.Input((None,), dtype="int32", name=key)
        for key in ("input_word_ids", "input_mask", "input_type_ids")
    }
    backbone_inputs = {
        "token_ids": inputs["input_word_ids"],
        "segment_ids": inputs["input_type_ids"],
        "padding_mask": inputs["input_mask"],
    }
    if layers:
        sequences = layer_features.outputs_model(backbone, layers)(backbone_inputs)
        if output_key == "sequence_output":
            features = layer_features.concatenate(sequences)
        else:
            features = layer_features.pooled_sequences(
                sequences, pooling, inputs["input_mask"]
            )
        return keras.Model(inputs, features, name=f"{name}_backbone")
    outputs = backbone(backbone_inputs)
    if output_key is not None:
        features = outputs[output_key]
    elif pooling == "pooled":
        features = outputs["pooled_output"]
    else:
        features = layer_features.pooled_sequences(
            [outputs["sequence_output"]], pooling, inputs["input_mask"]
        )
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
