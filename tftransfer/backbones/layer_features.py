"""Features from a backbone's intermediate layers: which layers a model
offers, the choice `layers=` makes among them, and how the chosen outputs
are pooled and concatenated.

The KerasHub, `keras.applications` and TF Hub text sources share this: each
says its `feature_layers` (stage ends of image models, transformer layers of
text encoders), `select_layers()` reads a `layers=` option against them,
and `image_features()` / `pooled_sequences()` turn the selected outputs into
the backbone's result.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from tftransfer.errors import ConfigError

FEATURE_MAP = "feature_map"
"""The `output_key` of image backbones that returns the unpooled spatial
features `[batch, height * width, channels]`."""

SEQUENCE_POOLINGS = ("mean", "first", "max")
"""How `MaskedPooling` reduces a sequence (`tftransfer.vocabulary.POOLINGS`
without a model's own `"pooled"`)."""


@keras.saving.register_keras_serializable(package="tftransfer")
class MaskedPooling(keras.layers.Layer):
    """Pools a sequence `[batch, length, dim]` over the positions a mask keeps.

    Args:
        mode: `"mean"` (average over the kept positions), `"max"` (largest
            value over them) or `"first"` (the first position, such as
            BERT's `[CLS]` token).

    Call arguments:
        sequence: float tensor `[batch, length, dim]`.
        mask: optional `[batch, length]` tensor, 1 for real tokens and 0 for
            padding (BERT's `input_mask`); every position counts without it.

    Returns:
        float tensor `[batch, dim]`.

    Example:

    >>> pooled = MaskedPooling("mean")(sequence_output, mask=input_mask)
    """

    def __init__(self, mode: str = "mean", **kwargs):
        super().__init__(**kwargs)
        if mode not in SEQUENCE_POOLINGS:
            raise ConfigError(
                f"Expected pooling to be one of {SEQUENCE_POOLINGS}. "
                f"Received: pooling={mode!r}."
            )
        self.mode = mode
        # It takes the mask a Keras sequence carries (KerasHub's do) and
        # returns none: the pooled output has no positions.
        self.supports_masking = True

    def compute_mask(self, inputs, mask=None):
        return None

    def call(self, sequence, mask=None):
        ops = keras.ops
        if self.mode == "first":
            return sequence[:, 0, :]
        if mask is None:
            mask = ops.ones(ops.shape(sequence)[:2], sequence.dtype)
        mask = ops.expand_dims(ops.cast(mask, sequence.dtype), -1)
        if self.mode == "max":
            lowest = ops.full_like(sequence, -3.0e38)
            return ops.max(ops.where(mask > 0, sequence, lowest), axis=1)
        total = ops.sum(sequence * mask, axis=1)
        return total / ops.maximum(ops.sum(mask, axis=1), 1e-9)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def select_layers(
    handle: str,
    layers: Sequence[int | str],
    feature_layers: tuple[str, ...],
    names: Sequence[str] = (),
) -> tuple[str, ...]:
    """Reads a `layers=` option: the names of the chosen layers, in order.

    Args:
        handle: The backbone, for messages.
        layers: Each item an int (an index into `feature_layers`, negatives
            counting from the end) or a str (a layer name).
        feature_layers: The layers the backbone offers as candidates.
        names: Every layer name a str may give (those of the underlying
            Keras model); `feature_layers` where empty.

    Returns:
        The layer names, in the order of `layers`.

    Raises:
        ConfigError: listing `feature_layers`, for an empty `layers`, an
            index out of range, an unknown name or an item of another type.
    """
    names = set(names) | set(feature_layers)
    offered = f"Its feature_layers are {list(feature_layers)}"
    if isinstance(layers, (str, int)) or not layers:
        raise ConfigError(
            f"Expected `layers` to be a non-empty list of layer indices or "
            f"names for backbone {handle!r}. Received: layers={layers!r}. "
            f"{offered}."
        )
    chosen = []
    for item in layers:
        if isinstance(item, int) and not isinstance(item, bool):
            if not -len(feature_layers) <= item < len(feature_layers):
                raise ConfigError(
                    f"Backbone {handle!r} offers {len(feature_layers)} feature "
                    f"layers, so index {item} is out of range. {offered}; "
                    "index them (negatives from the end) or name a layer."
                )
            chosen.append(feature_layers[item])
        elif isinstance(item, str) and item in names:
            chosen.append(item)
        else:
            raise ConfigError(
                f"Backbone {handle!r} has no layer {item!r}. {offered}; pass "
                "an index into them, one of their names or another layer name "
                "of its Keras model."
            )
    return tuple(chosen)


def layer_name(tensor: keras.KerasTensor) -> str:
    """The name of the layer of a functional model that outputs `tensor`."""
    return tensor._keras_history[0].name


def outputs_model(model: keras.Model, names: Sequence[str]) -> keras.Model:
    """Returns a model from `model`'s inputs to the outputs of the layers
    `names` (a list, in order), sharing `model`'s weights.

    Raises:
        ConfigError: if a layer is called more than once in `model`, so
            that it has no single output.
    """
    outputs = []
    for name in names:
        try:
            outputs.append(model.get_layer(name).output)
        except (AttributeError, ValueError) as error:
            raise ConfigError(
                f"Layer {name!r} of {model.name!r} has no single output "
                f"({error}); choose another layer."
            ) from error
    return keras.Model(model.input, outputs, name=f"{model.name}_layers")


def output_specs(
    model: keras.Model, names: Sequence[str], input_shape: tuple | None = None
) -> list[keras.KerasTensor]:
    """The symbolic outputs of the layers `names`, for inputs of
    `input_shape` (the model's own input shape where `None`); nothing runs."""
    if input_shape is None:
        return [model.get_layer(name).output for name in names]
    spec = keras.KerasTensor(input_shape, dtype=model.input.dtype)
    return list(outputs_model(model, names).compute_output_spec(spec))


def check_ranks(
    handle: str, names: Sequence[str], specs: Sequence, rank: int, what: str
) -> None:
    """Raises `ConfigError` unless every selected output has `rank` axes."""
    for name, spec in zip(names, specs, strict=True):
        if len(spec.shape) != rank:
            raise ConfigError(
                f"Layer {name!r} of backbone {handle!r} outputs shape "
                f"{tuple(spec.shape)}; `layers` takes layers that output "
                f"{what}. Choose one of its feature_layers."
            )


def check_same_size(handle: str, names: Sequence[str], specs: Sequence) -> None:
    """Raises `ConfigError` unless the selected feature maps share one
    spatial size (so that `feature_map` can concatenate their positions)."""
    sizes = {
        name: tuple(spec.shape[1:3]) for name, spec in zip(names, specs, strict=True)
    }
    if len(set(sizes.values())) > 1:
        raise ConfigError(
            f"output_key={FEATURE_MAP!r} concatenates the positions of the "
            f"selected layers of backbone {handle!r}, so they need one spatial "
            f"size. Received layers of sizes {sizes}. Choose layers of one "
            "size, or pool them (omit output_key)."
        )


def pooled_images(feature_maps: list, pooling: str) -> keras.KerasTensor:
    """Mean or max over space of each `[batch, height, width, channels]`
    map, concatenated along the channels."""
    pool = (
        keras.layers.GlobalAveragePooling2D
        if pooling == "mean"
        else keras.layers.GlobalMaxPooling2D
    )
    return concatenate([pool()(x) for x in feature_maps])


def feature_map(feature_maps: list) -> keras.KerasTensor:
    """Each `[batch, height, width, channels]` map as the sequence of its
    positions `[batch, height * width, channels]`, concatenated along the
    channels."""
    return concatenate(
        [keras.layers.Reshape((-1, int(x.shape[-1])))(x) for x in feature_maps]
    )


def image_features(
    feature_maps: list, output_key: str | None, pooling: str
) -> keras.KerasTensor:
    """An image backbone's result from its selected maps: the unpooled
    positions for `output_key=FEATURE_MAP` (`feature_map()`), else the maps
    pooled with `pooling` (`pooled_images()`)."""
    if output_key == FEATURE_MAP:
        return feature_map(feature_maps)
    return pooled_images(feature_maps, pooling)


def pooled_sequences(sequences: list, pooling: str, mask) -> keras.KerasTensor:
    """Each `[batch, tokens, dim]` sequence pooled over the tokens `mask`
    keeps (`MaskedPooling`), concatenated along the features."""
    return concatenate([MaskedPooling(pooling)(x, mask=mask) for x in sequences])


def concatenate(tensors: list) -> keras.KerasTensor:
    """`tensors` joined along their last axis (the one tensor as it is)."""
    if len(tensors) == 1:
        return tensors[0]
    return keras.layers.Concatenate(axis=-1)(tensors)


def stage_ends(model: keras.Model) -> tuple[str, ...]:
    """The layers of an image model that end a stage, shallow to deep.

    A stage is the run of blocks at one spatial size. Its end is found on
    the graph, whatever the layers are named: the last merge layer (`Add`,
    `Concatenate`; not an `x + y` op, which has no name) at that size that every path from input to output
    passes through, followed on along the layers after it that keep its
    shape (a ResNet block's final ReLU) while they too are on every path.
    Sizes without a merge (a stem) have no end; the model's output is the
    last entry. Where the model leaves its spatial size open, a stage is
    the run of blocks of one shape instead.

    Returns:
        The layer names, e.g. `("conv2_block3_out", ..., "conv5_block3_out")`
        for ResNet50.
    """
    operations = list(model.operations)
    position = {id(op): i for i, op in enumerate(operations)}
    consumers: dict[int, list[int]] = {}
    on_every_path = [True] * len(operations)
    for i, op in enumerate(operations):
        for node in op._inbound_nodes:
            for tensor in node.input_tensors:
                source = position.get(id(tensor._keras_history[0]))
                if source is None or source >= i:
                    continue
                consumers.setdefault(source, []).append(i)
                for skipped in range(source + 1, i):
                    on_every_path[skipped] = False
    ends: dict[tuple, str] = {}
    for i, op in enumerate(operations):
        shape = tuple(op.output.shape) if _single_output(op) else ()
        merge = isinstance(op, (keras.layers.Add, keras.layers.Concatenate))
        if len(shape) != 4 or not merge or not on_every_path[i]:
            continue
        end = i
        while len(consumers.get(end, [])) == 1:
            (after,) = consumers[end]
            if not on_every_path[after] or not _single_output(operations[after]):
                break
            if tuple(operations[after].output.shape) != shape:
                break
            end = after
        # Spatial sizes unknown until called (`None`): one stage per width.
        size = shape[1:3] if None not in shape[1:3] else shape[1:]
        ends[size] = operations[end].name
    final = layer_name(model.output)
    return tuple(name for name in ends.values() if name != final) + (final,)


def _single_output(op) -> bool:
    """Whether `op` is called once and returns one tensor."""
    nodes = op._inbound_nodes
    return len(nodes) == 1 and len(nodes[0].output_tensors) == 1
