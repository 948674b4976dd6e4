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
from tftransfer.errors import HandleError, HandleNotFoundError
from tftransfer.export.writer import atomic_version_dir, resolve_version, versions
from tftransfer.recipes import heads
from tftransfer.recipes.backbone_changes import WeightChange, backbone_changes

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
    recipe,
    path: str | os.PathLike,
    *,
    version: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes what a fitted recipe changed of its backbone, and its head.

    Every weight of the served backbone is compared with the source
    backbone (rebuilt from its config): a kernel that LoRA adapted is
    stored as its two factors and scale, any other changed weight (BitFit's
    biases and norms, every weight after full fine-tuning, BatchNorm
    statistics with `train_batchnorm=True`) as its difference from the
    source, compressed; unchanged weights are not stored. Beside them: the
    head (`head.keras`), the backbone's config (source and handle), a digest
    of the source weights, the input spec, pooling, task and class names
    (`delta.json`). The version folder `<path>/<version>/` appears at once
    when complete (as exports do).

    Args:
        recipe: a fitted `FineTuning` (or `FeatureExtraction`) recipe whose
            backbone is a `tftransfer.Backbone` with a config.
        path: the base folder; versions are numbered folders in it.
        version: the version to write (`None`: the next one).
        overwrite: whether an existing `version` may be replaced.

    Returns:
        The version folder written.

    Raises:
        ArgumentError: if `recipe` is not fitted or its backbone cannot be
            rebuilt from a config.
        ExportError: if the version exists (without `overwrite`) or cannot
            be written.

    Example:

    >>> recipe = FineTuning(backbone, method="lora").fit(train, validation)
    >>> tftransfer.deltas.save_delta(recipe, "deltas/bbc")
    PosixPath('deltas/bbc/1')
    """
    found = backbone_changes(recipe)
    arrays, entries = {}, []
    for change in found.changes:
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
        "backbone": found.config,
        "source_digest": weights_digest(found.source),
        "inputs": _input_configs(recipe.model.input),
        "pooling": recipe.settings["pooling"],
        "task": recipe.task,
        "class_names": recipe.class_names,
        "method": recipe.settings.get("method", "head"),
        "entries": entries,
    }
    version = resolve_version(path, version, overwrite)
    with atomic_version_dir(path, version, overwrite) as tmp:
        np.savez_compressed(tmp / _ARRAYS, **arrays)
        recipe.head.save(tmp / _HEAD)
        (tmp / _METADATA).write_text(json.dumps(metadata, indent=2))
    return Path(path) / str(version)


def load_delta(path: str | os.PathLike, *, backbone: Backbone | None = None):
    """Rebuilds a fine-tuned model from its source backbone and a delta.

    The source backbone is built (from the config the delta records, or
    `backbone`), its weights checked against the recorded digest, the
    delta applied (LoRA products merged into their kernels: the model has
    no LoRA overhead) and the head put on top.

    Args:
        path: a version folder that `save_delta` wrote, or its base folder
            (the latest version is read).
        backbone: the source `Backbone`, where the recorded handle is not
            where it lives here (for example a local copy).

    Returns:
        A `keras.Model` from prepared inputs to the task's outputs, as the
        recipe's `model`. `delta.json` in the folder holds its
        `class_names` and task.

    Raises:
        HandleNotFoundError: if `path` holds no delta.
        HandleError: if the source backbone's weights do not have the
            digest the delta was made against.

    Example:

    >>> model = tftransfer.deltas.load_delta("deltas/bbc")
    >>> model.predict(prepared_inputs)
    """
    folder = _version_folder(Path(path))
    metadata = json.loads((folder / _METADATA).read_text())
    config = metadata["backbone"]
    if backbone is not None:
        key = Backbone.from_config(config).output_key
        config = (
            backbone.with_output(key).get_config() if key else backbone.get_config()
        )
    layer = _build(config)
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
    head = keras.saving.load_model(folder / _HEAD)
    specs = {name: _spec(c) for name, c in metadata["inputs"].items()}
    inputs = heads.model_inputs(specs.get(_ONE_INPUT, specs))
    features = heads.feature_model(
        layer, inputs, pooling=metadata["pooling"], backbone_name=repr(config)
    )
    return keras.Model(features.input, head(features.output), name="delta")


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
