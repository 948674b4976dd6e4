"""tftransfer: transfer learning with pretrained models in TensorFlow and Keras 3."""

from tftransfer import export  # a callable module: tftransfer.export(...)
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
    "ConfigError",
    "DataError",
    "ExportError",
    "HandleError",
    "HandleNotFoundError",
    "HubLayer",
    "InputSpecError",
    "TFTransferError",
    "TrainingError",
    "export",
    "resolve",
]
