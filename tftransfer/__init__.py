"""tftransfer: transfer learning with pretrained models in TensorFlow and Keras 3.

The public API is what this module exports. Its parts load on first use, so
that `import tftransfer` (and the `tftransfer --help` command) does not wait
for TensorFlow to start.
"""

import importlib
from typing import TYPE_CHECKING, Any

from tftransfer.errors import (
    ArgumentError,
    ConfigError,
    DataError,
    DataNotFoundError,
    ExportError,
    HandleError,
    HandleNotFoundError,
    InputSpecError,
    TFTransferError,
    TrainingError,
)

if TYPE_CHECKING:
    from tftransfer import (
        backbones,
        config,
        data,
        defaults,
        deltas,
        distribute,
        explain,
        export,
        hub,
        precision,
        recipes,
        selection,
        vocabulary,
    )
    from tftransfer.backbones import Backbone, backbone, hubify
    from tftransfer.deltas import load_delta, save_delta
    from tftransfer.hub import HubLayer, resolve
    from tftransfer.recipes import fine_tune
    from tftransfer.selection import rank

__version__ = "0.1.0"

# Public name -> (module, attribute in it; None for the module itself).
_LAZY_EXPORTS = {
    "Backbone": ("tftransfer.backbones", "Backbone"),
    "HubLayer": ("tftransfer.hub", "HubLayer"),
    "backbone": ("tftransfer.backbones", "backbone"),
    "backbones": ("tftransfer.backbones", None),
    "config": ("tftransfer.config", None),
    "data": ("tftransfer.data", None),
    "defaults": ("tftransfer.defaults", None),
    "deltas": ("tftransfer.deltas", None),
    "distribute": ("tftransfer.distribute", None),
    "explain": ("tftransfer.explain", None),  # a callable module
    "export": ("tftransfer.export", None),  # a callable module
    "fine_tune": ("tftransfer.recipes", "fine_tune"),
    "hub": ("tftransfer.hub", None),
    "hubify": ("tftransfer.backbones", "hubify"),
    "load_delta": ("tftransfer.deltas", "load_delta"),
    "precision": ("tftransfer.precision", None),
    "rank": ("tftransfer.selection", "rank"),
    "recipes": ("tftransfer.recipes", None),
    "resolve": ("tftransfer.hub", "resolve"),
    "save_delta": ("tftransfer.deltas", "save_delta"),
    "selection": ("tftransfer.selection", None),
    "vocabulary": ("tftransfer.vocabulary", None),
}

__all__ = [
    "ArgumentError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "ExportError",
    "HandleError",
    "HandleNotFoundError",
    "InputSpecError",
    "TFTransferError",
    "TrainingError",
    "Backbone",
    "HubLayer",
    "backbone",
    "backbones",
    "config",
    "data",
    "defaults",
    "deltas",
    "distribute",
    "explain",
    "export",
    "fine_tune",
    "hub",
    "hubify",
    "load_delta",
    "precision",
    "rank",
    "recipes",
    "resolve",
    "save_delta",
    "selection",
    "vocabulary",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY_EXPORTS:
        raise AttributeError(f"module 'tftransfer' has no attribute {name!r}")
    module_name, attribute = _LAZY_EXPORTS[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_EXPORTS))
