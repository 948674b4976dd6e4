"""tftransfer: transfer learning with pretrained models in TensorFlow and Keras 3."""

from tftransfer import export  # a callable module: tftransfer.export(...)
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
    "export",
    "hubify",
    "resolve",
]
