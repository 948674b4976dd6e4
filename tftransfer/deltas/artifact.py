"""`save_delta` and `load_delta`: a fine-tuned model as source + Δθ."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tftransfer.backbones import Backbone
from tftransfer.errors import ArgumentError, HandleError, HandleNotFoundError
from tftransfer.export.writer import atomic_version_dir, resolve_version, versions
from tftransfer.messages import short_repr
from tftransfer.recipes import heads, peft
from tftransfer.recipes.backbone_changes import (
    WeightChange,
    backbone_changes,
    weight_changes,
)

FORMAT = "tftransfer-delta/1"
_METADATA = "delta.json"
_ARRAYS = "delta.npz"
_HEAD = "head.keras"
_ONE_INPUT = ""
# The arrays of each kind of change, by key prefix in the `.npz` file.
_ARRAY_KEYS = {"lora": ("a", "b"), "difference": ("d",)}


def weights_digest(layer: keras.Layer) -> str:
    """The SHA-256 of `layer`'s weights (dtype, shape and bytes of each, in
    order): what identifies θ_source.

    Example:

    >>> weights_digest(backbone.build())
    'sha256:4be1...'
    """
    digest = hashlib.sha256()
    for weight in layer.weights:
        value = np.ascontiguousarray(weight.numpy())
        digest.update(f"{value.dtype.str}{value.shape}".encode())
        digest.update(value.tobytes())
    return f"sha256:{digest.hexdigest()}"


def save_delta(
    recipe_or_model,
    path: str | os.PathLike,
    *,
    backbone: Backbone | None = None,
    version: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes what fine-tuning changed of a backbone, and the rest of the model.

    Every weight of the fine-tuned backbone is compared with the source
    backbone: a kernel that LoRA adapted is stored as its two factors and
    scale, any other changed weight (BitFit's biases and norms, every
    weight after full fine-tuning, BatchNorm statistics with
    `train_batchnorm=True`) as its difference from the source, compressed;
    unchanged weights are not stored. Beside them (`delta.json`): the
    backbone's config (source and handle) and a digest of the source
    weights. Of a recipe, also its head (`head.keras`), input spec,
    pooling, task and class names; of a Keras model, the values of its
    weights outside the backbone layer (its head), by position. The
    version folder `<path>/<version>/` appears at once when complete (as
    exports do).

    Args:
        recipe_or_model: a fitted `FineTuning` (or `FeatureExtraction`)
            recipe whose backbone is a `tftransfer.Backbone` with a config;
            or a `keras.Model` with a layer that `backbone.build()` made
            (LoRA enabled on it or not), fine-tuned.
        path: the base folder; versions are numbered folders in it.
        backbone: with a Keras model, the source `Backbone` (with a config).
        version: the version to write (`None`: the next one).
        overwrite: whether an existing `version` may be replaced.

    Returns:
        The version folder written.

    Raises:
        ArgumentError: if a recipe is not fitted, its backbone cannot be
            rebuilt from a config or it comes with `backbone`, or a Keras
            model comes without `backbone` or has no layer with that
            backbone's weights.
        ExportError: if the version exists (without `overwrite`) or cannot
            be written.

    Examples:

    >>> recipe = FineTuning(backbone, method="lora").fit(train, validation)
    >>> tftransfer.deltas.save_delta(recipe, "deltas/bbc")
    PosixPath('deltas/bbc/1')

    >>> model = keras.Sequential([keras.Input((224, 224, 3)), backbone.build(),
    ...                           keras.layers.Dense(5, activation="softmax")])
    >>> model.fit(images, labels)
    >>> tftransfer.deltas.save_delta(model, "deltas/flowers", backbone=backbone)
    """
    if isinstance(recipe_or_model, keras.Model):
        model = recipe_or_model
        config = _config_of(backbone)
        source = _build(config)
        layer = _backbone_layer(model, source, config)
        changes = weight_changes(source, layer)
        own = {id(w) for w in layer.weights}
        rest = [w for w in model.weights if id(w) not in own]
        extra = {f"w{j}": w.numpy() for j, w in enumerate(rest)}
        facts = {"kind": "model", "model_weights": [w.path for w in rest]}
        head = None
    else:
        if backbone is not None:
            raise ArgumentError(
                "save_delta takes backbone= with a keras.Model only: a "
                "recipe has its backbone. Remove backbone=."
            )
        recipe = recipe_or_model
        found = backbone_changes(recipe)
        config, source, changes = found.config, found.source, found.changes
        extra, head = {}, recipe.head
        facts = {
            "kind": "recipe",
            "inputs": _input_configs(recipe.model.input),
            "pooling": recipe.settings["pooling"],
            "task": recipe.task,
            "class_names": recipe.class_names,
            "method": recipe.settings.get("method", "head"),
        }
    arrays, entries = dict(extra), []
    for change in changes:
        i = change.position
        keys = _ARRAY_KEYS[change.kind]
        arrays.update(
            {f"{key}{i}": a for key, a in zip(keys, change.arrays, strict=True)}
        )
        entries.append(
            {
                "position": i,
                "path": change.path,
                "kind": change.kind,
                "scale": change.scale,
            }
        )
    metadata = {
        "format": FORMAT,
        "backbone": config,
        "source_digest": weights_digest(source),
        **facts,
        "entries": entries,
    }
    version = resolve_version(path, version, overwrite)
    with atomic_version_dir(path, version, overwrite) as tmp:
        np.savez_compressed(tmp / _ARRAYS, **arrays)
        if head is not None:
            head.save(tmp / _HEAD)
        (tmp / _METADATA).write_text(json.dumps(metadata, indent=2))
    return Path(path) / str(version)


def load_delta(
    path: str | os.PathLike,
    *,
    backbone: Backbone | None = None,
    model: keras.Model | None = None,
):
    """Rebuilds a fine-tuned model from its source backbone and a delta.

    The source backbone is built (from the config the delta records, or
    `backbone`), its weights checked against the recorded digest and the
    delta applied (LoRA products merged into their kernels: the model has
    no LoRA overhead). A recipe's delta gets its head put on top; a Keras
    model's delta is loaded into `model`, a fresh copy of its architecture
    on the source backbone, whose other weights take the saved values.

    Args:
        path: a version folder that `save_delta` wrote, or its base folder
            (the latest version is read).
        backbone: the source `Backbone`, where the recorded handle is not
            where it lives here (for example a local copy).
        model: for a delta of a Keras model: the model to load it into
            (built as the saved one was, on `backbone.build()`'s layer
            holding the source weights, without LoRA).

    Returns:
        A `keras.Model`: from prepared inputs to the task's outputs (as the
        recipe's `model`; `delta.json` in the folder holds its
        `class_names` and task), or `model`, loaded.

    Raises:
        HandleNotFoundError: if `path` holds no delta.
        HandleError: if the source backbone's weights do not have the
            digest the delta was made against.
        ArgumentError: if a Keras model's delta comes without `model` (or
            a recipe's with one), or `model` does not have the saved
            model's weights or has LoRA enabled on its backbone layer.

    Example:

    >>> model = tftransfer.deltas.load_delta("deltas/bbc")
    >>> model.predict(prepared_inputs)
    """
    folder = _version_folder(Path(path))
    metadata = json.loads((folder / _METADATA).read_text())
    config = metadata["backbone"]
    if backbone is not None:
        key = Backbone.from_config(config).output_key
        config = _config_of(backbone.with_output(key) if key else backbone)
    by_model = metadata.get("kind") == "model"
    if by_model == (model is None):
        raise ArgumentError(
            f"The delta {str(folder)!r} was saved from a keras.Model: pass "
            "model=, the same architecture built on the source backbone, to "
            "load it into."
            if by_model
            else f"The delta {str(folder)!r} was saved from a recipe and "
            "rebuilds its model: remove model=."
        )
    source = _build(config)
    layer = _backbone_layer(model, source, config) if by_model else source
    if peft.factor_variables(layer):
        raise ArgumentError(
            f"The backbone layer of model {model.name!r} has LoRA enabled; "
            "load_delta merges LoRA into the kernels. Build the model to "
            "load into without LoRA."
        )
    digest = weights_digest(layer)
    if digest != metadata["source_digest"]:
        raise HandleError(
            f"The backbone {config['arguments']['handle']!r} does not hold the "
            f"weights the delta {str(folder)!r} was made against: expected "
            f"{metadata['source_digest']}, received {digest}. Load the delta "
            "with the source backbone it was fine-tuned from (pass backbone= "
            "where it lives elsewhere)."
        )
    with np.load(folder / _ARRAYS) as arrays:
        for entry in metadata["entries"]:
            i = entry["position"]
            change = WeightChange(
                i,
                entry["path"],
                entry["kind"],
                tuple(arrays[f"{key}{i}"] for key in _ARRAY_KEYS[entry["kind"]]),
                entry["scale"],
            )
            weight = layer.weights[i]
            weight.assign(change.applied_to(weight.numpy()))
        if by_model:
            _load_rest(model, layer, arrays, metadata["model_weights"], folder)
            return model
    head = keras.saving.load_model(folder / _HEAD)
    specs = {name: _spec(c) for name, c in metadata["inputs"].items()}
    inputs = heads.model_inputs(specs.get(_ONE_INPUT, specs))
    features = heads.feature_model(
        layer, inputs, pooling=metadata["pooling"], backbone_name=repr(config)
    )
    return keras.Model(features.input, head(features.output), name="delta")


def _config_of(backbone) -> dict:
    if not isinstance(backbone, Backbone):
        raise ArgumentError(
            "save_delta and load_delta of a keras.Model need backbone=, the "
            "tftransfer.Backbone its backbone layer was built from. Received: "
            f"backbone={short_repr(backbone)}."
        )
    return backbone.get_config()


def _backbone_layer(model: keras.Model, source: keras.Layer, config: dict):
    """The outermost layer of `model` with the weights of `source` (their
    shapes and dtypes, in order; LoRA factors aside)."""
    wanted = [(tuple(w.shape), w.dtype) for w in source.weights]
    for layer in model._flatten_layers(include_self=False, recursive=True):
        factors = {id(v) for v in peft.factor_variables(layer)}
        own = [w for w in layer.weights if id(w) not in factors]
        if [(tuple(w.shape), w.dtype) for w in own] == wanted:
            return layer
    raise ArgumentError(
        f"Model {model.name!r} has no layer with the weights of the backbone "
        f"{config['arguments'].get('handle')!r}. Build the model on the layer "
        "that backbone.build() returns, and pass that backbone."
    )


def _load_rest(model, layer, arrays, paths: list, folder: Path) -> None:
    """Assigns the saved values of `model`'s weights outside `layer`."""
    own = {id(w) for w in layer.weights}
    rest = [w for w in model.weights if id(w) not in own]
    shapes = [tuple(arrays[f"w{j}"].shape) for j in range(len(paths))]
    if [tuple(w.shape) for w in rest] != shapes:
        raise ArgumentError(
            f"Model {model.name!r} is not the model the delta {str(folder)!r} "
            f"was saved from: its weights outside the backbone are "
            f"{[w.path for w in rest]}, the delta's {paths}."
        )
    for j, weight in enumerate(rest):
        weight.assign(arrays[f"w{j}"])


def _build(config: dict) -> keras.Layer:
    return Backbone.from_config(config).build(trainable=False)


def _input_configs(inputs) -> dict:
    """The model's inputs by name (a single input under `_ONE_INPUT`)."""
    if not isinstance(inputs, dict):
        inputs = {_ONE_INPUT: inputs}
    return {
        name: {"shape": [None, *tensor.shape[1:]], "dtype": tensor.dtype}
        for name, tensor in inputs.items()
    }


def _spec(config: dict) -> tf.TensorSpec:
    return tf.TensorSpec(config["shape"], config["dtype"])


def _version_folder(path: Path) -> Path:
    if (path / _METADATA).exists():
        return path
    found = versions(path)
    if not found:
        raise HandleNotFoundError(
            f"No delta at {str(path)!r}: expected a folder with {_METADATA} "
            "that tftransfer.deltas.save_delta wrote, or a base folder of "
            "numbered versions of one."
        )
    return path / str(found[-1])
