"""tftransfer: transfer learning with pretrained models in TensorFlow and Keras 3."""

from tftransfer import (
    distribute,
    export,  # a callable module: tftransfer.export(...)
    recipes,
)
from tftransfer.backbones import Backbone, backbone, hubify
from tftransfer.errors import (
    ConfigError,
    DataError,
    ExportError,
    HandleError,
    HandleNotFoundError,
    InputSpecError,
    TFTransferError,
    TrainingError,
)
from tftransfer.hub import HubLayer, resolve
from tftransfer.recipes import fine_tune

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "ConfigError",
    "DataError",
    "ExportError",
    "HandleError",
    "HandleNotFoundError",
    "HubLayer",
    "InputSpecError",
    "TFTransferError",
    "TrainingError",
    "backbone",
    "distribute",
    "export",
    "fine_tune",
    "hubify",
    "recipes",
    "resolve",
]
