"""The backbone source of `.npz` weights for `keras.applications` models ("npz")."""

from __future__ import annotations

import os
import re
import zipfile
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from tftransfer.backbones.description import Backbone
from tftransfer.backbones.keras_application_source import (
    application,
    application_backbone,
)
from tftransfer.backbones.registry import register_source
from tftransfer.backbones.source import BackboneSource
from tftransfer.errors import ConfigError, HandleError, HandleNotFoundError

APPLICATION_KEY = "__application__"
IMAGE_SIZE_KEY = "__image_size__"
MAX_BYTES = 2 * 1024**3
"""The most bytes a `.npz` may hold, compressed or not."""
# A path part: its name and the `_<n>` suffix Keras may have numbered it with.
_SUFFIX = re.compile(r"(.+?)(?:_(\d+))?")


class NpzWeightsSource(BackboneSource):
    """A NumPy `.npz` of weights for a `keras.applications` architecture.

    The file holds the application's name under `"__application__"` (a
    string), its input size under `"__image_size__"` (`[height, width]`)
    and one array per weight of the application without its top, keyed by
    the variable's `path` (`"conv/kernel"`, ...). The application is built
    with `weights=None` and every array is assigned to its variable, so
    the weights are never pickled code and need no network.

    Paths are matched without the `_<n>` suffixes that Keras appends to
    the names of unnamed layers and variables, which change with each
    build in a process (EfficientNet's `normalization/mean` is
    `normalization_1/mean` the second time); paths alike but for those
    suffixes are matched in the order of their suffixes.

    The file is read once, without pickles and within `MAX_BYTES`, and
    checked against the architecture before any backbone is built: a
    missing or extra weight, a wrong shape or an array of another kind
    (floats for float weights, integers for integer ones such as
    `normalization/count`) is a `ConfigError` naming it.

    Example:

    >>> np.savez(
    ...     "mobilenet.npz",
    ...     __application__="MobileNetV3Small",
    ...     __image_size__=[96, 96],
    ...     **{v.path: v.numpy() for v in model.weights},
    ... )
    >>> tftransfer.backbone("mobilenet.npz").feature_dim
    576
    """

    name = "npz"
    form = "path"
    accepts = 'a ".npz" of keras.applications weights, named by variable path'

    def is_supported(self, handle: str, **options: Any) -> bool:
        return handle.lower().endswith(".npz")

    def build(
        self, handle: str, *, pooling: str = "mean", name: str | None = None
    ) -> Backbone:
        name_of_application, image_size, arrays = _read(handle)
        model = application(name_of_application)(
            include_top=False, weights=None, input_shape=(*image_size, 3)
        )
        matched = _match(handle, arrays, model.weights)

        def assign(model):
            paths = [variable.path for variable in model.weights]
            for variable, key in zip(model.weights, _weight_keys(paths), strict=True):
                variable.assign(matched[key].astype(variable.dtype))
            return model

        return application_backbone(
            name_of_application,
            image_size,
            pooling,
            assign,
            handle=handle,
            name=name or os.path.splitext(os.path.basename(handle))[0],
        )


def _read(path: str) -> tuple[str, tuple[int, int], dict[str, np.ndarray]]:
    """Reads the application name, image size and weights of a `.npz`.

    Raises:
        HandleNotFoundError: if `path` does not exist.
        HandleError: if it is too large, not an `.npz`, holds pickled
            objects or lacks a reserved key.
    """
    if not os.path.isfile(path):
        raise HandleNotFoundError(
            f"The weights file {path!r} does not exist. Pass the path of an "
            "existing .npz file."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            size = sum(member.file_size for member in archive.infolist())
    except zipfile.BadZipFile as error:
        raise HandleError(f"{path!r} is not an .npz (zip) file: {error}.") from error
    if max(size, os.path.getsize(path)) > MAX_BYTES:
        raise HandleError(
            f"The weights file {path!r} holds {size} bytes, more than "
            f"{MAX_BYTES}; refusing to read it."
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except ValueError as error:
        raise HandleError(
            f"The weights file {path!r} holds pickled objects, which are "
            f"never loaded ({error}). Save plain numeric arrays with np.savez."
        ) from error
    for key in (APPLICATION_KEY, IMAGE_SIZE_KEY):
        if key not in arrays:
            raise HandleError(
                f"The weights file {path!r} has no {key!r} entry. Save the "
                f"application's name as {APPLICATION_KEY!r} and its input "
                f"[height, width] as {IMAGE_SIZE_KEY!r} beside the weights."
            )
    name = arrays.pop(APPLICATION_KEY)
    image_size = arrays.pop(IMAGE_SIZE_KEY)
    if name.dtype.kind != "U" or name.shape != ():
        raise HandleError(
            f"Expected {APPLICATION_KEY!r} in {path!r} to be one string, such as "
            f"'MobileNetV2'. Received: {name.dtype} array of shape {name.shape}."
        )
    if image_size.dtype.kind not in "iu" or image_size.shape != (2,):
        raise HandleError(
            f"Expected {IMAGE_SIZE_KEY!r} in {path!r} to be two integers "
            f"[height, width]. Received: {image_size!r}."
        )
    return str(name), (int(image_size[0]), int(image_size[1])), arrays


def _weight_keys(paths: Sequence[str]) -> list[tuple[str, int]]:
    """The key of each variable path: the path without Keras's `_<n>`
    suffixes, and its rank, by suffix, among the paths alike but for them.

    Keras numbers the names of unnamed layers and variables per process
    (`normalization`, `normalization_1`, ...), so two builds of one
    architecture give their weights the same keys, in the same order.
    """
    parts = {
        path: [_SUFFIX.fullmatch(part).groups() for part in path.split("/")]
        for path in paths
    }
    alike = defaultdict(list)
    for path in paths:
        alike["/".join(name for name, _ in parts[path])].append(path)
    keys = {}
    for stripped, group in alike.items():
        ranked = sorted(group, key=lambda p: [int(n or -1) for _, n in parts[p]])
        keys.update({path: (stripped, rank) for rank, path in enumerate(ranked)})
    return [keys[path] for path in paths]


def _match(
    path: str, arrays: dict[str, np.ndarray], variables: list[keras.Variable]
) -> dict[tuple[str, int], np.ndarray]:
    """Matches `arrays` to the application's weights (see `_weight_keys()`).

    Returns:
        `{key: array}` for each of `variables`.

    Raises:
        ConfigError: naming the missing or extra weights (without their
            `_<n>` suffixes), or the first array with another shape or kind
            of dtype than its weight.
    """
    saved = dict(zip(_weight_keys(list(arrays)), arrays, strict=True))
    paths = [variable.path for variable in variables]
    expected = dict(zip(_weight_keys(paths), variables, strict=True))
    missing = sorted({stripped for stripped, _ in expected.keys() - saved.keys()})
    extra = sorted({stripped for stripped, _ in saved.keys() - expected.keys()})
    if missing or extra:
        raise ConfigError(
            f"The weights in {path!r} do not match the architecture: missing "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"extra {extra[:5]}{' ...' if len(extra) > 5 else ''} ({len(extra)}) "
            "(paths without Keras's `_<n>` suffixes). Save one array per "
            "variable path of the application without its top, at the same "
            "image size."
        )
    for key, variable in expected.items():
        array = arrays[saved[key]]
        kind = np.dtype(variable.dtype).kind
        if array.dtype.kind != kind and {array.dtype.kind, kind} != {"i", "u"}:
            raise ConfigError(
                f"Weight {saved[key]!r} in {path!r} is {array.dtype}; the "
                f"architecture's {variable.path!r} is {variable.dtype}. Save "
                "its values as they are."
            )
        if array.shape != tuple(variable.shape):
            raise ConfigError(
                f"Weight {saved[key]!r} in {path!r} has shape {array.shape}; the "
                f"architecture expects {tuple(variable.shape)}."
            )
    return {key: arrays[saved[key]] for key in expected}


register_source(NpzWeightsSource())
