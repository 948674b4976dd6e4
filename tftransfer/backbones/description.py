"""`Backbone`: one description of a pretrained model, whatever its source."""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from tftransfer.backbones import registry
from tftransfer.backbones.source import call_with_options
from tftransfer.errors import ConfigError, InputSpecError
from tftransfer.vocabulary import MODALITIES


class Backbone:
    """A pretrained model described the same way whatever its source.

    A `Backbone` says what a pretrained model takes (image size and value
    range, or raw strings and the preprocessor that turns them into token
    tensors), what it gives (the size of its feature vector) and how to
    build it as a Keras layer. Data loaders read `image_size`,
    `value_range` and `text_preprocessor()`; recipes call `build()`.

    Create one with `tftransfer.backbone()`, which asks the registered
    backbone sources (`tftransfer.backbones.register_source`) which one
    supports a handle or catalogue name, or by source name with
    `Backbone.from_source()`. These conveniences name the built-in sources:

    - `Backbone.from_hub(handle)`: a TF Hub image feature vector model.
    - `Backbone.from_hub_text(preprocessor, encoder)`: a TF Hub text
      preprocessor + encoder pair (BERT family).
    - `Backbone.from_keras_hub(preset)`: a KerasHub preset (image or BERT).
    - `Backbone.from_keras_application(name, weights=...)`: a
      `keras.applications` model.

    Calling the constructor directly with a `builder` describes any Keras
    layer; such a backbone trains and exports, but has no source, so
    `get_config()` cannot record it.

    Args:
        name: Short name, used in logs, model names and model cards.
        handle: Where the weights come from (URL, path or preset name).
        modality: `"image"` or `"text"`.
        feature_dim: Size of the feature vector that `build()` returns.
        builder: Callable `builder(trainable: bool) -> keras.Layer`.
            `build()` passes `load_options=` too when it is given some, so
            builders that load a SavedModel take it as a keyword argument.
        image_size: `(height, width)` the model takes (images only).
        value_range: `(low, high)` of the pixel values the model takes
            (images only; TF Hub's convention `(0.0, 1.0)` by default).
        seq_length: Number of tokens per example (text only).
        output_key: Which output of the underlying model is the feature
            vector, where it has several (for example `"pooled_output"`).
        outputs: The outputs `with_output()` can select (empty where the
            model has a single one).
        preprocessor_factory: Callable returning the text preprocessor
            (text only).
        source: The registered name of the source whose model this is
            (`Backbone.from_source()` sets it); `None` for a hand-built one.
        feature_layers: The names of the intermediate layers the source
            offers as feature candidates for `layers=` (below), shallow to
            deep; empty where it offers none.

    Features from intermediate layers: the KerasHub, `keras.applications`
    and TF Hub text sources take `layers=`, a list whose items are each an
    int (an index into `feature_layers`, negatives counting from the end)
    or a str (a layer name of the underlying Keras model). Each selected
    layer's output is pooled with the backbone's pooling (images: mean or
    max over space; text: masked mean, first token or masked max over
    tokens) and the results are concatenated in the order given, so
    `feature_dim` is the sum of their sizes. `feature_layers` are each
    stage's output for image backbones (the last block at each spatial
    size; KerasHub's pyramid outputs where a model has them, the last block
    of each stage for EfficientNet) and each transformer layer for text
    encoders (`transformer_layer_0` ... for KerasHub BERT,
    `encoder_outputs_0` ... for TF Hub). With `output_key="feature_map"`
    (images) the selected maps are not pooled but returned as sequences of
    positions `[batch, height * width, channels]` (concatenated along the
    channels; they must share one spatial size), and with
    `output_key="sequence_output"` (text) the selected layers' token
    outputs `[batch, tokens, dim]`, concatenated along the features;
    recipes pool those with `pooling=`.

    Random-init controls: KerasHub backbones take `load_weights=False` and
    `keras.applications` ones `weights=None`: the same architecture with
    random weights, the same for the same `seed=` (0 by default), drawn
    without touching the caller's random state.

    Example:

    >>> backbone = tftransfer.backbone("mobilenet_v2_100_224")
    >>> backbone.image_size, backbone.value_range, backbone.feature_dim
    ((224, 224), (0.0, 1.0), 1280)
    >>> features = backbone.build(trainable=False)(images)  # [batch, 1280]
    >>> minilm = tftransfer.backbone("all-minilm-l6-v2", layers=[2, -1])
    >>> minilm.feature_layers[:2], minilm.feature_dim
    (('transformer_layer_0', 'transformer_layer_1'), 768)
    """

    def __init__(
        self,
        *,
        name: str,
        handle: str,
        modality: str,
        feature_dim: int,
        builder: Callable[[bool], keras.Layer],
        image_size: tuple[int, int] | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
        seq_length: int | None = None,
        output_key: str | None = None,
        outputs: tuple[str, ...] = (),
        preprocessor_factory: Callable[[], Callable] | None = None,
        source: str | None = None,
        feature_layers: tuple[str, ...] = (),
    ):
        if source is not None:
            registry.get_source(source)
        if modality not in MODALITIES:
            raise ConfigError(
                f"Expected `modality` to be one of {MODALITIES}. "
                f"Received: modality={modality!r} for backbone {handle!r}."
            )
        if modality == "image" and image_size is None:
            raise ConfigError(
                f"Image backbone {handle!r} needs `image_size=(height, width)`; "
                "pass it to the constructor."
            )
        if modality == "text" and preprocessor_factory is None:
            raise ConfigError(
                f"Text backbone {handle!r} needs a text preprocessor; "
                "pass `preprocessor_factory`."
            )
        self.name = name
        self.handle = handle
        self.source = source
        self.modality = modality
        self.feature_dim = int(feature_dim)
        self.image_size = (
            (int(image_size[0]), int(image_size[1])) if image_size else None
        )
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.seq_length = int(seq_length) if seq_length is not None else None
        self.output_key = output_key
        self.outputs = tuple(outputs)
        self.feature_layers = tuple(feature_layers)
        self._builder = builder
        self._preprocessor_factory = preprocessor_factory
        self._preprocessor = None
        self._config = None

    def build(
        self,
        trainable: bool = False,
        load_options: tf.saved_model.LoadOptions | None = None,
    ) -> keras.Layer:
        """Builds a new Keras layer that maps prepared inputs to features.

        Build it inside the `scope()` of the strategy that trains it.

        Args:
            trainable: Whether the pretrained weights are trained
                (fine-tuning) or frozen (feature extraction).
            load_options: `tf.saved_model.LoadOptions` for reading a TF Hub
                SavedModel, as `tftransfer.distribute.load_options(strategy)`
                gives them (on TPUs the local host reads the files). KerasHub
                and `keras.applications` backbones ignore them.

        Returns:
            A `keras.Layer` mapping prepared inputs to float32
            `[batch, feature_dim]`. Images: float32 `[batch, height, width,
            3]` in `value_range`. Text: the dict of int32 tensors that
            `text_preprocessor()` returns.
        """
        if load_options is None or not _takes_load_options(self._builder):
            layer = self._builder(bool(trainable))
        else:
            layer = self._builder(bool(trainable), load_options=load_options)
        layer.trainable = bool(trainable)
        return layer

    def with_output(self, output_key: str) -> Backbone:
        """Returns this backbone with another model output as its result.

        Args:
            output_key: One of `outputs`, for example `"sequence_output"`
                of a BERT encoder (`[batch, tokens, dim]`; recipes pool it
                with `pooling=`).

        Returns:
            A `Backbone` whose `build()` returns that output (this one if it
            already does).

        Raises:
            ConfigError: if the model has no such output.

        Example:

        >>> minilm = tftransfer.backbone("all-minilm-l6-v2")
        >>> tokens = minilm.with_output("sequence_output")
        """
        if output_key == self.output_key:
            return self
        check_output_key(self.name, self.handle, output_key, self.outputs)
        config = self.get_config()
        config["arguments"]["output_key"] = output_key
        return Backbone.from_config(config)

    def text_preprocessor(self) -> Callable:
        """Returns the function mapping raw strings to encoder inputs.

        The function maps a `tf.string` tensor `[batch]` to the dict of
        int32 `[batch, seq_length]` tensors (`input_word_ids`, `input_mask`,
        `input_type_ids`) that `build()` takes. It uses only TF Text ops
        that TF Serving ships, so it runs in `tf.data` pipelines and in
        exported serving graphs. It is created once and reused.

        Raises:
            InputSpecError: if the backbone is not a text backbone.
        """
        if self.modality != "text":
            raise InputSpecError(
                f"Backbone {self.name!r} ({self.handle}) takes images, not "
                "text: it has no text preprocessor. Resize images to "
                f"{self.image_size} with values in {self.value_range} instead."
            )
        if self._preprocessor is None:
            self._preprocessor = self._preprocessor_factory()
        return self._preprocessor

    def get_config(self) -> dict[str, Any]:
        """Returns the source and arguments that recreate this backbone.

        The result, `{"source": name, "arguments": {"handle": ..., ...}}`,
        is JSON-serialisable; `Backbone.from_config()` reverses it.

        Raises:
            ConfigError: if the backbone was built directly from a `builder`
                callable, which cannot be serialised.
        """
        if self._config is None:
            raise ConfigError(
                f"Backbone {self.name!r} was built from a `builder` callable "
                "and has no source to record, so it cannot be serialised; "
                "create it with `tftransfer.backbone()` or "
                "`Backbone.from_source()` (register a "
                "tftransfer.backbones.BackboneSource for a new kind of model)."
            )
        return copy.deepcopy(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Backbone:
        """Recreates a backbone from the output of `get_config()`.

        Raises:
            ConfigError: if `config` is not such a dict, or its source is
                not registered in this process.
        """
        if (
            not isinstance(config, dict)
            or not isinstance(config.get("source"), str)
            or not isinstance(config.get("arguments"), dict)
            or "handle" not in config["arguments"]
        ):
            raise ConfigError(
                "Expected a backbone config {'source': name, 'arguments': "
                "{'handle': ..., ...}} from Backbone.get_config(). "
                f"Received: config={config!r}."
            )
        arguments = dict(config["arguments"])
        return cls.from_source(config["source"], arguments.pop("handle"), **arguments)

    @classmethod
    def from_source(cls, source: str, handle: str, **options: Any) -> Backbone:
        """Builds `handle` with the registered source named `source`.

        The result records `source`, `handle` and `options`, so
        `get_config()` and `from_config()` recreate it.

        Args:
            source: The name of a registered source: a built-in one
                (`"hub"`, `"keras_application"`, ...; docs/backbones.md
                lists them) or one added with
                `tftransfer.backbones.register_source`.
            handle: What the source builds.
            **options: The source's keyword arguments.

        Returns:
            A `Backbone`.

        Raises:
            ConfigError: if no source is registered as `source`, or it takes
                none of `options`.

        Example:

        >>> Backbone.from_source("keras_application", "MobileNetV2",
        ...                      weights=None, image_size=(96, 96))
        """
        built = call_with_options(
            handle, registry.get_source(source).build, handle, **options
        )
        if not isinstance(built, Backbone):
            raise ConfigError(
                f"Backbone source {source!r} built {type(built).__name__} for "
                f"{handle!r}; its build() must return a tftransfer.Backbone."
            )
        recorded = copy.copy(built)
        recorded.source = built.source or source
        recorded._config = {
            "source": source,
            "arguments": _json_safe({"handle": handle, **options}),
        }
        return recorded

    @classmethod
    def from_hub(cls, handle: str, **options: Any) -> Backbone:
        """Describes a TF Hub image model (a TF2 reusable SavedModel).

        The image size, value range and feature size are read from the
        SavedModel's `__call__` signature where it says them (a fixed input
        shape; uint8 inputs mean `(0, 255)`); otherwise they are taken from
        the arguments, with TF Hub's convention of float32 in `(0.0, 1.0)`
        as the default value range. Inside a strategy's `scope()` the
        SavedModel is read with `tftransfer.distribute.load_options()`.
        Same as `Backbone.from_source("hub", handle, **options)`.

        Args:
            handle: A TF Hub / Kaggle URL, `gs://` path, local directory or
                anything `tftransfer.hub.resolve()` accepts.
            **options: The source's keyword arguments, below.
            image_size: `(height, width)`; required where the signature
                leaves it open.
            value_range: Pixel range the model takes. Defaults to the
                signature's (uint8: `(0, 255)`), else `(0.0, 1.0)`.
            output_key: Output to use where the model returns a dict.
            name: Short name; defaults to one derived from the handle.

        Example:

        >>> backbone = Backbone.from_hub(
        ...     "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/"
        ...     "feature_vector/5"
        ... )
        """
        return cls.from_source("hub", handle, **options)

    @classmethod
    def from_hub_text(
        cls, preprocessor: str | None, encoder: str, **options: Any
    ) -> Backbone:
        """Describes a TF Hub text encoder and its preprocessor.

        Same as `Backbone.from_source("hub_text", encoder,
        preprocessor=preprocessor, **options)`.

        Args:
            preprocessor: Handle of the TF Hub preprocessor SavedModel
                (with `tokenize` and `bert_pack_inputs`), or `None` for an
                encoder that takes raw strings (Universal Sentence Encoder);
                then `text_preprocessor()` passes strings through.
            encoder: Handle of the TF Hub encoder SavedModel.
            **options: The source's keyword arguments, below.
            seq_length: Tokens per example given to the encoder (128).
            output_key: The encoder output used as the feature vector, where
                it returns a dict; defaults to `"pooled_output"`. With
                `layers`: `None` (pooled) or `"sequence_output"` (unpooled).
            layers: Encoder layers (`encoder_outputs`, BERT-style) whose
                token outputs, pooled, are concatenated (see above).
            pooling: With `layers`: `"mean"` (default), `"first"` or `"max"`.
            name: Short name; defaults to one derived from the encoder handle.

        Example:

        >>> backbone = Backbone.from_hub_text(
        ...     "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3",
        ...     "https://tfhub.dev/tensorflow/small_bert/"
        ...     "bert_en_uncased_L-4_H-256_A-4/2",
        ...     seq_length=64,
        ... )
        """
        return cls.from_source(
            "hub_text", encoder, preprocessor=preprocessor, **options
        )

    @classmethod
    def from_keras_hub(cls, preset: str, **options: Any) -> Backbone:
        """Describes a KerasHub preset: an image backbone or a BERT encoder.

        `preset` is a KerasHub preset name, a `kaggle://` or `hf://` handle
        (where a network exists) or a local folder, including Hugging Face
        or timm checkpoints that KerasHub converts on load. Same as
        `Backbone.from_source("keras_hub", preset, **options)`.

        Args:
            preset: The preset name, handle or folder.
            **options: The source's keyword arguments, below.
            seq_length: Tokens per example (text presets; 128).
            pooling: How features are pooled (`tftransfer.vocabulary.POOLINGS`).
                Images: `"mean"` (default) or `"max"`. Text: `"pooled"` (the
                `[CLS]` pooler, default), `"first"` (the raw `[CLS]` token),
                `"mean"` (masked mean over tokens, sentence-transformers
                style) or `"max"` (masked max over tokens). With `layers`,
                text takes `"mean"` (default), `"first"` or `"max"`: the
                pooler sees only the last layer.
            output_key: Text: `"sequence_output"` (the token outputs
                `[batch, tokens, dim]`, unpooled) or `"pooled_output"` (the
                `[CLS]` pooler) instead of the `pooling` result. Images:
                `"feature_map"` (`[batch, height * width, channels]`).
            layers: Intermediate layers whose outputs, pooled, are
                concatenated (see above); `None` for the model's output.
            load_weights: `False` for random weights (a negative control).
            seed: Seed of those random weights (0).
            name: Short name; defaults to one derived from the preset.

        Example:

        >>> backbone = Backbone.from_keras_hub("efficientnet_lite0_ra_imagenet")
        """
        return cls.from_source("keras_hub", preset, **options)

    @classmethod
    def from_keras_application(cls, name: str, **options: Any) -> Backbone:
        """Describes a `keras.applications` model without its top.

        The built layer includes the application's own input preprocessing,
        so it takes float32 images with values in `(0.0, 255.0)`. Same as
        `Backbone.from_source("keras_application", name, **options)`.

        Args:
            name: The application's name, as in `keras.applications`
                (`"MobileNetV2"`, `"EfficientNetV2B0"`, `"ResNet50"`, ...).
            **options: The source's keyword arguments, below.
            weights: `"imagenet"` (the default; downloads, so needs a
                network), a path to a weights file (`.h5`) or `None` for
                random initialisation.
            image_size: `(height, width)`; defaults to the application's
                default size.
            pooling: `"mean"` (default) or `"max"`.
            layers: Intermediate layers whose outputs, pooled, are
                concatenated (see above); `None` for the model's output.
            output_key: `"feature_map"` for `[batch, height * width,
                channels]`, unpooled.
            seed: Seed of the random weights of `weights=None` (0).

        Example:

        >>> backbone = Backbone.from_keras_application(
        ...     "MobileNetV2", weights=None, image_size=(96, 96)
        ... )
        """
        return cls.from_source("keras_application", name, **options)

    def __repr__(self) -> str:
        shape = (
            f"image_size={self.image_size}, value_range={self.value_range}"
            if self.modality == "image"
            else f"seq_length={self.seq_length}"
        )
        return (
            f"Backbone(name={self.name!r}, source={self.source!r}, "
            f"handle={self.handle!r}, {shape}, feature_dim={self.feature_dim})"
        )


def check_output_key(
    name: str, handle: str, output_key: str | None, outputs: tuple[str, ...]
) -> None:
    """Checks that a backbone's model has the output `output_key`.

    Raises:
        ConfigError: naming the backbone and the outputs it has, if
            `output_key` is neither `None` nor one of `outputs`.
    """
    if output_key is None or output_key in outputs:
        return
    available = (
        f"its outputs are {list(outputs)}"
        if outputs
        else "it has a single output, its feature vector"
    )
    raise ConfigError(
        f"Backbone {name!r} ({handle}) has no output {output_key!r}: "
        f"{available}. Choose one of them, or none."
    )


def _json_safe(value: Any) -> Any:
    """`value` with tuples as lists and paths as strings, as JSON gives them."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _takes_load_options(builder: Callable) -> bool:
    """Whether a `builder` accepts `load_options=` (hand-written ones may not)."""
    parameters = inspect.signature(builder).parameters.values()
    return any(
        p.name == "load_options" or p.kind is inspect.Parameter.VAR_KEYWORD
        for p in parameters
    )
